"""Counted FLOPs: per-row tallies of the work a mode actually runs (a multiply-add is 2 FLOPs).

Every built-in mode returns `info["flops"]` (fp64 [N], the total per row) and `info["flops_matmul"]` (its matrix
product part). Two parts are kept:

- matmul: matrix products — dense [n, k] × [k, p] as 2·k·p per row, CSR codes × dense as 2·nnz(row)·p, batched
  block products [w, w] as 2·w² per row (matrix–vector) — the work torch's `FlopCounterMode` counts;
- other: Cholesky factorisations (w³/3), Cholesky solves (2·w²), triangular solves (w²) and elementwise Gram-row
  updates (2·m), which it does not count.

Rows of one batch share a product: each row is charged its own part of it, and rows that stay in a batch after they
stop (until the batch is compacted) are charged for the work still done on them, so the tallies add up to what ran.
One-off work per dictionary, cached and shared by every call (the Gram AAᵀ, σ_max by power iteration), is not
charged to rows.
"""

from __future__ import annotations

import torch
from torch import Tensor


class Flops:
    """Per-row FLOP tallies of one batch of N rows."""

    def __init__(self, n: int, device: torch.device | str = "cpu") -> None:
        self.matmul = torch.zeros(n, dtype=torch.float64, device=device)
        self.other = torch.zeros(n, dtype=torch.float64, device=device)

    def add(self, flops: Tensor | float, rows: Tensor | None = None, *, matmul: bool = True) -> None:
        """Charge `flops` (one number, or one per row of `rows`) to `rows` (None: every row)."""
        tally = self.matmul if matmul else self.other
        if rows is None:
            tally += flops
        elif isinstance(flops, Tensor):
            tally.index_add_(0, rows.to(tally.device), flops.to(tally))
        else:
            tally.index_add_(0, rows.to(tally.device), torch.full((rows.numel(),), float(flops), dtype=tally.dtype,
                                                                   device=tally.device))

    def product(self, a: Tensor, p: int, rows: Tensor | None = None) -> None:
        """Charge a = [n, k] (dense or CSR) times a [k, p] matrix to `rows` (None: every row, in order)."""
        self.add(product_flops(a, p), rows)

    def absorb(self, other: "Flops", rows: Tensor | None = None) -> None:
        """Add another batch's tallies, its row i onto rows[i] (None: row for row)."""
        self.add(other.matmul, rows)
        self.add(other.other, rows, matmul=False)

    def info(self) -> dict[str, Tensor]:
        return {"flops": self.matmul + self.other, "flops_matmul": self.matmul.clone()}


def product_flops(a: Tensor, p: int) -> Tensor:
    """Per row of a ([n, k], dense or CSR): FLOPs of a times a [k, p] matrix."""
    if a.layout == torch.sparse_csr:
        crow = a.crow_indices()
        return 2.0 * p * (crow[1:] - crow[:-1]).double()
    return torch.full((a.shape[0],), 2.0 * a.shape[1] * p, dtype=torch.float64, device=a.device)


def cholesky(w: int) -> float:
    """FLOPs of a w × w Cholesky factorisation."""
    return w**3 / 3.0


def cholesky_solve(w: int) -> float:
    """FLOPs of a solve with a w × w Cholesky factor (two triangular solves)."""
    return 2.0 * w * w


def combine(parts: list[dict], n: int, device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """The `info` flops of consecutive row chunks, concatenated (zeros when there are none)."""
    if not parts:
        return Flops(n, device).info()
    return {key: torch.cat([p[key] for p in parts]) for key in ("flops", "flops_matmul")}


def add_info(info: dict, extra: dict, rows: Tensor | None = None) -> dict:
    """`info` with `extra`'s flops added (onto `rows` of info's when given)."""
    out = dict(info)
    for key in ("flops", "flops_matmul"):
        if key in extra:
            base = out[key].clone() if key in out else torch.zeros_like(extra[key])
            if rows is None:
                base += extra[key].to(base)
            else:
                base.index_add_(0, rows.to(base.device), extra[key].to(base))
            out[key] = base
    return out
