"""Solving with a Cholesky factor, batched: the small systems every solver here runs for each row of a batch."""

from __future__ import annotations

import torch
from torch import Tensor


def solve_factored(b: Tensor, L: Tensor) -> Tensor:
    """x with (L Lᵀ) x = b for lower-triangular factors L [.., T, T] and right-hand sides b [.., T, p]: what
    `torch.cholesky_solve(b, L)` returns, as two triangular solves. On CPU torch's batched cholesky_solve is the
    slower of the two ways for the systems the solvers batch (one thread, fp64: 1 024 systems of 48 unknowns 2.1 ms
    against 1.8 ms, 512 of 100 unknowns 46 ms against 17 ms; the same digits)."""
    y = torch.linalg.solve_triangular(L, b, upper=False)
    return torch.linalg.solve_triangular(L.mT, y, upper=True)
