"""Per-row objective traces of the solvers (`return_trace=True`): F after each (inner) iteration, and traces of
row chunks joined."""

from __future__ import annotations

import math

import torch
from torch import Tensor


class SolveTrace:
    """F per row after each of its inner iterations ([T, N], row 0 = the start), forward-filled."""

    def __init__(self, n: int, device: torch.device) -> None:
        self.n, self.device = n, device
        self.entries: list[tuple[Tensor, Tensor, Tensor]] = []

    def record(self, rows: Tensor, at: Tensor, F: Tensor) -> None:
        self.entries.append((rows.clone(), at.clone(), F.double().clone()))

    def stack(self) -> Tensor:
        T = 1 + max((int(a.max()) for _, a, _ in self.entries if a.numel()), default=0)
        out = torch.full((T, self.n), math.nan, dtype=torch.float64, device=self.device)
        for rows, at, F in self.entries:
            out[at, rows] = F
        for i in range(1, T):
            out[i] = torch.where(torch.isnan(out[i]), out[i - 1], out[i])
        return out.float()


def trace_hook(trace: SolveTrace, rows: Tensor, iter0: Tensor):
    def on_step(at: Tensor, iters: Tensor, F: Tensor) -> None:
        trace.record(rows[at], iter0[at] + iters, F)

    return on_step


def cat_traces(traces: list[Tensor | None]) -> Tensor:
    """Concatenate per-chunk traces [T_i, n_i] along rows, padding shorter ones with their last value."""
    ts = [t for t in traces if t is not None]
    T = max(t.shape[0] for t in ts)
    padded = [torch.cat([t, t[-1:].expand(T - t.shape[0], -1)]) if t.shape[0] < T else t for t in ts]
    return torch.cat(padded, dim=1)
