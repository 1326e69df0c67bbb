"""The numba kernel of `ksparse_solver.py`'s compiled path: the monotone k-sparse projected gradient one row at a
time, in fp64, with the Gram (imported on first use). The steps, step-size rule and stopping rules are those of
`ksparse_pg`'s batched path (its module docstring); gradients are x'Aᵀ − uG, residuals x' − uA on the support."""

from __future__ import annotations

import numpy as np
from numba import njit

from saelens_amort.inference.cholesky_kernels import append, face_solve, minus_rows


@njit(cache=True)
def _project(v, kr, S, vals):
    """The kr largest positive entries of v into S / vals (a min-heap of the best so far: one comparison for most
    entries); returns how many."""
    cnt = 0
    for j in range(v.shape[0]):
        x = v[j]
        if not x > 0.0:
            continue
        if cnt < kr:  # sift up
            i = cnt
            cnt += 1
            while i > 0:
                p = (i - 1) // 2
                if vals[p] <= x:
                    break
                vals[i] = vals[p]
                S[i] = S[p]
                i = p
            vals[i] = x
            S[i] = j
        elif x > vals[0]:  # replace the smallest, sift down
            i = 0
            while True:
                c = 2 * i + 1
                if c >= cnt:
                    break
                if c + 1 < cnt and vals[c + 1] < vals[c]:
                    c += 1
                if vals[c] >= x:
                    break
                vals[i] = vals[c]
                S[i] = S[c]
                i = c
            vals[i] = x
            S[i] = j
    return cnt


@njit(cache=True)
def _polish(G, c0, d_in, S, vals, cnt, fraction, L, gamma, b, stats):
    """Move vals towards the least-squares solution on S (all the way when it is > 0, else `fraction` of the way to
    the first zero crossing); True when it reached it. Supports wider than d_in, or singular, are left as they are."""
    if cnt < 1 or cnt > d_in:
        return False
    for t in range(cnt):
        if not append(L, S, t, G, S[t], 0.0):
            return False
    stats[3] += cnt * cnt * cnt / 3.0 + 2.0 * cnt * cnt
    for t in range(cnt):
        b[t] = c0[S[t]]
    face_solve(L, cnt, b, gamma)
    ratio = np.inf
    for t in range(cnt):
        if gamma[t] <= 0.0:
            ratio = min(ratio, vals[t] / (vals[t] - gamma[t]))
    alpha = 1.0 if ratio == np.inf else fraction * ratio
    for t in range(cnt):
        vals[t] += alpha * (gamma[t] - vals[t])
    return ratio == np.inf


@njit(cache=True)
def _residual(A, x, S, vals, cnt, r):
    """r = x − Σ vals_t A[S_t]; returns ½‖r‖²."""
    minus_rows(x, A, S, vals, cnt, r)
    F = 0.0
    for i in range(x.shape[0]):
        F += r[i] * r[i]
    return 0.5 * F


@njit(cache=True)
def _pg_row(G, A, x, c0, kr, explained, max_iter, tol, base, max_step, fraction, polish_start, u, r, stats, S, vals,
            S2, vals2, L, gamma, b, v, mark):
    m, d = A.shape
    cnt = _project(u, kr, S, vals)
    exact = False
    if polish_start:
        exact = _polish(G, c0, d, S, vals, cnt, fraction, L, gamma, b, stats)
    F = _residual(A, x, S, vals, cnt, r)
    stats[3] += 2.0 * kr * d
    mu = (1.0 if kr >= d else max_step) * base
    n_iter = 0
    rejected = 0
    converged = F <= explained
    while not converged and n_iter < max_iter:
        minus_rows(c0, G, S, vals, cnt, v)  # v = u + μ (x'Aᵀ − uG)
        for j in range(m):
            v[j] *= mu
        for t in range(cnt):
            v[S[t]] += vals[t]
        stats[3] += 2.0 * m * cnt
        cnt2 = _project(v, kr, S2, vals2)
        for j in range(cnt):
            mark[S[j]] = True
        same = cnt2 == cnt
        for t in range(cnt2):
            if not mark[S2[t]]:
                same = False
        for j in range(cnt):
            mark[S[j]] = False
        if exact and same:  # a fixed point: the polish would return the code it has
            n_iter += 1
            converged = True
            break
        reached = _polish(G, c0, d, S2, vals2, cnt2, fraction, L, gamma, b, stats)
        # the candidate's residual goes to v's first d entries (v is free again), the row's own stays in r
        F2 = _residual(A, x, S2, vals2, cnt2, v)
        stats[3] += 2.0 * kr * d
        accept = F2 <= F
        n_iter += 1
        if not accept:
            rejected += 1
        settled = accept and same and (F - F2 <= tol * F2)
        stalled = (not accept) and mu <= base * (1 + 1e-6)
        done = settled or stalled or (accept and F2 <= explained)
        if accept:
            for t in range(cnt2):
                S[t] = S2[t]
                vals[t] = vals2[t]
            cnt = cnt2
            for i in range(d):
                r[i] = v[i]
            F = F2
            exact = reached
            mu = min(2.0 * mu, max_step * base)
        else:
            mu = max(0.5 * mu, base)
        if done:
            converged = True
    for j in range(m):
        u[j] = 0.0
    for t in range(cnt):
        u[S[t]] = vals[t]
    stats[0] = n_iter
    stats[1] = 1.0 if converged else 0.0
    stats[2] = rejected


@njit(cache=True)
def pg_rows(G, A, X, C0, k_rows, explained, max_iter, tol, base, max_step, fraction, polish_start, U, R, stats):
    """Every row in turn: U holds the starts on entry and the codes on exit, R the residuals; per row: iterations,
    converged, rejected steps, FLOPs into `stats`."""
    n, m = C0.shape
    cap = 1
    for i in range(n):
        cap = max(cap, min(k_rows[i], m))
    S = np.empty(cap, np.int64)
    S2 = np.empty(cap, np.int64)
    vals = np.empty(cap)
    vals2 = np.empty(cap)
    L = np.empty((cap, cap))
    gamma = np.empty(cap)
    b = np.empty(cap)
    v = np.empty(max(m, A.shape[1]))
    mark = np.zeros(m, np.bool_)
    for i in range(n):
        _pg_row(G, A, X[i], C0[i], k_rows[i], explained[i], max_iter, tol, base, max_step, fraction, polish_start,
                U[i], R[i], stats[i], S, vals, S2, vals2, L, gamma, b, v, mark)


def ksparse_compiled(X, dictionary, gram64, k_rows, u0, max_iter, tol, polish_start):
    """`ksparse_pg` through the kernel: X (work dtype, CPU), the dictionary, its fp64 Gram; the same outputs."""
    import torch

    from saelens_amort.inference.flops import Flops
    from saelens_amort.inference.ksparse_solver import EXPLAINED, MAX_STEP, POLISH_FRACTION, KSparseOutput

    wd = X.dtype
    n, m = X.shape[0], dictionary.d_sae
    A = dictionary.atoms.double().contiguous()
    X64 = X.double().contiguous()
    c0 = X64 @ A.T
    flops = Flops(n)
    flops.add(2.0 * A.shape[1] * m)
    explained = EXPLAINED * torch.finfo(wd).eps * X64.square().sum(dim=1)
    lipschitz = dictionary.lipschitz
    base = 1.0 / lipschitz if lipschitz > 0 else 1.0
    U = np.zeros((n, m)) if u0 is None else u0.double().contiguous().numpy().copy()
    R = np.zeros((n, A.shape[1]))
    stats = np.zeros((n, 4))
    pg_rows(gram64.contiguous().numpy(), A.numpy(), X64.numpy(), c0.numpy(), k_rows.long().contiguous().numpy(),
            explained.numpy(), int(max_iter), float(tol), float(base), MAX_STEP, POLISH_FRACTION, bool(polish_start),
            U, R, stats)
    st = torch.from_numpy(stats)
    flops.add(st[:, 3], torch.arange(n), matmul=False)
    return KSparseOutput(torch.from_numpy(U).to(wd), torch.from_numpy(R).to(wd), st[:, 0].long(), st[:, 1] > 0,
                         int(st[:, 2].sum()), flops)
