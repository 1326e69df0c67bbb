"""The numba kernel of `omp.py`'s compiled path: non-negative OMP one row at a time, in fp64, with the Gram (imported
on first use). The steps are those of `nn_omp`'s batched path (its module docstring); the factor is of the active
atoms only, a dropped atom leaves it by a Givens downdate, and the thresholds come in from the caller."""

from __future__ import annotations

import numpy as np
from numba import njit

from saelens_amort.inference.cholesky_kernels import append, minus_rows, remove


@njit(cache=True)
def _omp_row(G, A, x, c0, floor_c, independent, budget, prefix, u, u_prefix, r, stats, L, S, gam, z, y, b, c, inS,
             blocks):
    m = G.shape[0]
    for j in range(m):
        inS[j] = False
    k = 0  # active atoms
    taken = 0  # selections
    dropped = 0
    flops = 0.0
    snapped = prefix <= 0
    while taken < budget:
        minus_rows(c0, G, S, gam, k, c)  # c = x'Aᵀ − γ G_S
        flops += 2.0 * k * m
        best = -1
        top = floor_c
        for j in range(m):
            if c[j] > top and not inS[j]:
                top = c[j]
                best = j
        if best < 0:
            break  # nothing correlates above the floor: the residual is explained, or nothing is positive
        if not append(L, S, k, G, best, independent):
            break  # the new atom is (numerically) in the span of the support
        flops += 1.0 * k * k + 2.0 * k
        S[k] = best
        inS[best] = True
        b[k] = c0[best]
        s = b[k]
        for t in range(k):
            s -= L[k, t] * y[t]
        y[k] = s / L[k, k]
        gam[k] = 0.0
        k += 1
        taken += 1
        while True:  # least squares on the support, kept non-negative by Lawson–Hanson steps from gam
            for i in range(k - 1, -1, -1):
                s = y[i]
                for t in range(i + 1, k):
                    s -= L[t, i] * z[t]
                z[i] = s / L[i, i]
            flops += 1.0 * k * k
            alpha = 1.0
            neg = False
            for t in range(k):
                if z[t] < 0.0:
                    neg = True
                    ratio = gam[t] / (gam[t] - z[t])
                    if ratio < alpha:
                        alpha = ratio
            if not neg:
                break
            for t in range(k):
                blocks[t] = z[t] < 0.0 and gam[t] / (gam[t] - z[t]) <= alpha
                gam[t] += alpha * (z[t] - gam[t])
            for t in range(k - 1, -1, -1):
                if blocks[t] or gam[t] <= 0.0:
                    inS[S[t]] = False
                    for i in range(t, k - 1):
                        b[i] = b[i + 1]
                        blocks[i] = blocks[i + 1]
                    flops += remove(L, S, gam, k, t)
                    k -= 1
                    dropped += 1
            for i in range(k):  # y = L⁻¹ b on the smaller support
                s = b[i]
                for t in range(i):
                    s -= L[i, t] * y[t]
                y[i] = s / L[i, i]
            flops += 1.0 * k * k
        for t in range(k):
            gam[t] = z[t]
        if taken == prefix:
            snapped = True
            for t in range(k):
                u_prefix[S[t]] = gam[t]
    for t in range(k):
        u[S[t]] = gam[t]
    minus_rows(x, A, S, gam, k, r)  # the residual x' − uA
    flops += 2.0 * k * x.shape[0]
    if not snapped:
        for t in range(k):
            u_prefix[S[t]] = gam[t]
    stats[0] = taken
    stats[1] = dropped
    stats[2] = flops


@njit(cache=True)
def omp_rows(G, A, X, C0, floors, independent, budgets, prefixes, U, UP, R, stats):
    """Every row of X (C0 = XAᵀ) in turn, codes into U (zeros on entry), each row's codes after prefixes[r]
    selections into UP, residuals into R; per row: selections, atoms dropped, FLOPs into `stats`."""
    n, m = C0.shape
    cap = 1
    for r in range(n):
        cap = max(cap, min(budgets[r], m))
    L = np.empty((cap, cap))
    S = np.empty(cap, np.int64)
    gam = np.empty(cap)
    z = np.empty(cap)
    y = np.empty(cap)
    b = np.empty(cap)
    c = np.empty(m)
    inS = np.empty(m, np.bool_)
    blocks = np.empty(cap, np.bool_)
    for r in range(n):
        _omp_row(G, A, X[r], C0[r], floors[r], independent, budgets[r], prefixes[r], U[r], UP[r], R[r], stats[r], L, S,
                 gam, z, y, b, c, inS, blocks)


def nn_omp_compiled(X, A, k, gram, k_rows, prefix):
    """`nn_omp` through the kernel (X, A in the work dtype on the CPU; `gram` AAᵀ, fp64 preferred): the same outputs,
    the codes in X's dtype. Thresholds are the batched path's, in the work dtype's eps."""
    import torch

    from saelens_amort.inference.flops import Flops
    from saelens_amort.inference.omp import INDEPENDENCE, STOP_CORRELATION, PursuitOutput

    wd = X.dtype
    n, m = X.shape[0], A.shape[0]
    eps = torch.finfo(wd).eps
    X64 = X.double().contiguous()
    A64 = A.double().contiguous()
    c0 = X64 @ A64.T
    floors = (STOP_CORRELATION * eps * X64.norm(dim=1)).numpy()
    budgets = (torch.full((n,), k) if k_rows is None else k_rows.clamp(max=k)).long().contiguous().numpy()
    prefixes = (torch.full((n,), -1) if prefix is None else prefix).long().contiguous().numpy()
    U = np.zeros((n, m))
    UP = np.zeros((n, m) if prefix is not None else (n, 0))
    R = np.zeros((n, A.shape[1]))
    stats = np.zeros((n, 3))
    omp_rows(gram.contiguous().numpy(), A64.numpy(), X64.numpy(), c0.numpy(), floors, INDEPENDENCE * eps, budgets,
             prefixes, U, UP, R, stats)
    flops = Flops(n)
    flops.add(2.0 * A.shape[1] * m)  # x'Aᵀ
    st = torch.from_numpy(stats)
    flops.add(st[:, 2], torch.arange(n), matmul=False)
    return PursuitOutput(torch.from_numpy(U).to(wd), torch.from_numpy(R).to(wd), st[:, 0].long(), int(st[:, 1].sum()),
                         flops, torch.from_numpy(UP).to(wd) if prefix is not None else None)
