"""Cholesky factors of a support's Gram G_SS, kept up to date one atom at a time, and the support-weighted row sum
(numba; shared by the compiled active-set lasso, OMP and the k-sparse solver). L is a [cap, cap] lower-triangular buffer of which the first k rows are the factor; S holds
the support's atom indices in slot order."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def append(L, S, k, G, j, dependent):
    """Extend the Cholesky factor L of G_SS (k atoms) by atom j; False (L unchanged) if j is dependent on S."""
    for i in range(k):
        s = G[S[i], j]
        for t in range(i):
            s -= L[i, t] * L[k, t]
        L[k, i] = s / L[i, i]
    d = G[j, j]
    for t in range(k):
        d -= L[k, t] * L[k, t]
    if d <= dependent * G[j, j]:
        return False
    L[k, k] = np.sqrt(d)
    return True


@njit(cache=True)
def remove(L, S, uS, k, p):
    """Drop slot p from the support S, its values uS and from L (rows below p shift up; Givens rotations on columns
    j, j+1 restore the lower triangle). Returns the FLOPs spent."""
    for i in range(p, k - 1):
        S[i] = S[i + 1]
        uS[i] = uS[i + 1]
        for t in range(i + 2):
            L[i, t] = L[i + 1, t]
    flops = 0.0
    for j in range(p, k - 1):  # row j has an extra entry at column j + 1
        a, b = L[j, j], L[j, j + 1]
        r = np.sqrt(a * a + b * b)
        cs, sn = a / r, b / r
        for i in range(j, k - 1):
            lij, lij1 = L[i, j], L[i, j + 1]
            L[i, j] = cs * lij + sn * lij1
            L[i, j + 1] = -sn * lij + cs * lij1
        L[j, j + 1] = 0.0
        flops += 6.0 * (k - 1 - j)
    return flops


@njit(cache=True)
def face_solve(L, k, b, z):
    """z = (L Lᵀ)⁻¹ b on the first k slots."""
    for i in range(k):
        s = b[i]
        for t in range(i):
            s -= L[i, t] * z[t]
        z[i] = s / L[i, i]
    for i in range(k - 1, -1, -1):
        s = z[i]
        for t in range(i + 1, k):
            s -= L[t, i] * z[t]
        z[i] = s / L[i, i]


@njit(cache=True)
def minus_rows(base, M, S, vals, k, out):
    """out = base − Σ_t vals[t] · M[S[t]] over the first k slots (a correlation c0 − γG_S from the Gram, or a
    residual x' − uA from the atoms)."""
    for j in range(base.shape[0]):
        out[j] = base[j]
    for t in range(k):
        a = vals[t]
        row = S[t]
        for j in range(base.shape[0]):
            out[j] -= a * M[row, j]
