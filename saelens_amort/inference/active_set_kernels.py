"""The numba kernels of `active_set.py` (imported on first use: compiling them, or loading numba's cache, takes
seconds the other modes should not pay). One row at a time; every array fp64 but the index and flag arrays."""

from __future__ import annotations

import numpy as np
from numba import njit

from saelens_amort.inference.cholesky_kernels import append, face_solve, remove


@njit(cache=True)
def _solve_row(G, c, lam, xx, tol, floor, max_iter, per_round, cap, dependent, u, stats, L, S, uS, z, b, w, inS,
               banned):
    m = G.shape[0]
    k = 0
    for j in range(m):
        inS[j] = False
        banned[j] = False
    flops = 0.0
    for j in range(m):  # warm start: its support, factorised atom by atom (dependent atoms keep their code at 0)
        if u[j] > 0.0 and k < cap:
            if append(L, S, k, G, j, dependent):
                S[k] = j
                uS[k] = u[j]
                inS[j] = True
                k += 1
                flops += 2.0 * k * k
    iters = 0
    certified = False
    F = 0.0
    face_fresh = False  # u is the minimiser of its current face
    while True:
        for j in range(m):  # w = Gu − c + λ
            w[j] = lam - c[j]
        for t in range(k):
            a = uS[t]
            row = S[t]
            for j in range(m):
                w[j] += a * G[row, j]
        flops += 2.0 * m * k
        quad = 0.0  # uᵀGu
        lin = 0.0  # cᵀu
        l1 = 0.0
        for t in range(k):
            s = S[t]
            quad += uS[t] * (w[s] + c[s] - lam)
            lin += uS[t] * c[s]
            l1 += uS[t]
        F = 0.5 * quad - lin + 0.5 * xx + lam * l1
        gmax = 0.0  # max_j (c − Gu)_j
        for j in range(m):
            if lam - w[j] > gmax:
                gmax = lam - w[j]
        scale = 1.0 if gmax <= lam else lam / gmax
        rr = max(xx - 2.0 * lin + quad, 0.0)  # ‖r‖²
        D = scale * (xx - lin) - 0.5 * scale * scale * rr  # ½‖x‖² − ½‖x − θ‖², θ = scale·r
        gap = F - D
        if gap <= max(tol * F, floor * xx):
            certified = True
            break
        if iters >= max_iter:
            break
        added = 0
        for _ in range(per_round):
            best = -1
            worst = 0.0
            for j in range(m):
                if w[j] < worst and not inS[j] and not banned[j]:
                    worst = w[j]
                    best = j
            if best < 0 or k >= cap:
                break
            flops += 2.0 * k * k
            if append(L, S, k, G, best, dependent):
                S[k] = best
                uS[k] = 0.0
                inS[best] = True
                k += 1
                added += 1
            else:
                banned[best] = True
        if added == 0 and face_fresh:
            break  # nothing can enter and u already minimises its face: stuck short of the certificate
        while iters < max_iter:
            for t in range(k):
                b[t] = c[S[t]] - lam
            face_solve(L, k, b, z)
            flops += 2.0 * k * k
            iters += 1
            alpha = 1.0
            block = -1
            for t in range(k):
                if z[t] <= 0.0:
                    step = uS[t] / (uS[t] - z[t]) if uS[t] > 0.0 else 0.0
                    if block < 0 or step < alpha:
                        alpha = step
                        block = t
            if block < 0:
                for t in range(k):
                    uS[t] = z[t]
                face_fresh = True
                break
            for t in range(k):
                uS[t] += alpha * (z[t] - uS[t])
            uS[block] = 0.0
            for t in range(k - 1, -1, -1):  # leave: the blocking atom and every atom at zero heading below it
                if t == block or (uS[t] <= 0.0 and z[t] <= 0.0):
                    inS[S[t]] = False
                    flops += remove(L, S, uS, k, t)
                    k -= 1
                elif uS[t] < 0.0:
                    uS[t] = 0.0
            face_fresh = False
    for j in range(m):
        u[j] = 0.0
    for t in range(k):
        u[S[t]] = uS[t]
    stats[0] = iters
    stats[1] = 1.0 if certified else 0.0
    stats[2] = F
    stats[3] = flops


@njit(cache=True)
def solve_rows(G, C, lam, XX, tol, floor, max_iter, per_round, cap, dependent, U, stats):
    """Every row of C (= x'Aᵀ) in turn; codes into U (read as the warm start), per-row stats into `stats`."""
    n, m = C.shape
    cap = min(cap, m)
    L = np.empty((cap, cap))
    S = np.empty(cap, np.int64)
    uS = np.empty(cap)
    z = np.empty(cap)
    b = np.empty(cap)
    w = np.empty(m)
    inS = np.empty(m, np.bool_)
    banned = np.empty(m, np.bool_)
    for r in range(n):
        _solve_row(G, C[r], lam, XX[r], tol, floor, max_iter, per_round, cap, dependent, U[r], stats[r], L, S, uS,
                   z, b, w, inS, banned)
