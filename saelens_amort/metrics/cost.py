"""Cost per mode: wall time and FLOPs per token (DESIGN §4).

Wall time is `InferenceResult.seconds` (carried in `MetricBatch.seconds`) summed over batches, per token: the mode
call, including the encoder pass that starts an encoder-started mode (semi) and excluding λ calibration, which
`infer` reports apart (`info["calibration"]["seconds"]`; the eval, `EvalLambda.seconds`).

FLOPs per token are *counted*: every built-in mode returns `info["flops"]`, the FLOPs its solver actually ran for
each row (`inference/flops.py`: matrix products as run — dense 2·k·p per row, sparse codes 2·nnz·p, the working-set
solver's restricted [w, w] block products 2·w², certificates on the full dictionary — plus Cholesky factorisations
and solves; multiply-add = 2), carried in `MetricBatch.flops`. A batch without counted FLOPs (a third-party mode)
falls back to a formula of its per-row iterations n (`MetricBatch.n_iter`), d = d_in, m = d_sae, when its mode is
named in `FLOP_MODELS` (the plain-matmul costs of the built-in algorithms, for results that carry no count):

| mode | FLOPs per token (fallback) |
|---|---|
| amortized | 2·d·m (one encoder matmul) |
| semi | 2·d·m + n·4·d·m (warm start, then n FISTA steps: uA and its gradient (uA − x')Aᵀ) |
| unamortized | n·4·d·m (starts from 0) |
| omp | Σ_{t=1..n} (2·d·m + 4·d·t + 3·t²): correlations rAᵀ, residual and Gram row on the support, Cholesky solves |
| mp | n·(2·d·m + 2·d): correlations and the residual update |

Other modes without a count: FLOPs skipped with the reason. `artifacts()["flops_source"]` says which was used.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from saelens_amort.metrics.registry import Metric, MetricBatch, check_batch, register_metric


def _omp(n: Tensor, d: int, m: int) -> Tensor:
    n = n.double()
    return 2 * d * m * n + 2 * d * n * (n + 1) + n * (n + 1) * (2 * n + 1) / 2


FLOP_MODELS: dict[str, Callable[[Tensor, int, int], Tensor]] = {
    "amortized": lambda n, d, m: torch.full_like(n, 2.0 * d * m, dtype=torch.float64),
    "semi": lambda n, d, m: 2.0 * d * m + 4.0 * d * m * n.double(),
    "unamortized": lambda n, d, m: 4.0 * d * m * n.double(),
    "omp": _omp,
    "mp": lambda n, d, m: n.double() * (2.0 * d * m + 2.0 * d),
}
"""Mode → FLOPs per row from (n_iter [N], d_in, d_sae): the fallback for results without counted FLOPs."""


def flops_per_row(mode: str, n_iter: Tensor, d_in: int, d_sae: int) -> Tensor | None:
    """Estimated FLOPs per row of `mode` (fp64 [N]), or None when the mode has no FLOP model."""
    model = FLOP_MODELS.get(mode)
    return None if model is None else model(n_iter, d_in, d_sae)


class CostMetric(Metric):
    """Seconds per token, FLOPs per token and mean iterations of one mode."""

    name = "cost"

    def __init__(self) -> None:
        super().__init__()
        self.n = 0
        self.n_timed = 0
        self.seconds = 0.0
        self.n_flops = 0
        self.flops = 0.0
        self.n_iter_rows = 0
        self.n_iter_sum = 0.0
        self.modes: set[str] = set()
        self.no_flop_model: set[str] = set()
        self.flops_source: set[str] = set()

    def update(self, batch: MetricBatch) -> None:
        batch = check_batch(batch)
        n = batch.n_rows
        self.n += n
        if batch.seconds is not None:
            self.seconds += float(batch.seconds)
            self.n_timed += n
        if batch.mode is not None:
            self.modes.add(batch.mode)
        if batch.flops is not None:
            self.flops += float(batch.flops.double().sum())
            self.n_flops += n
            self.flops_source.add("counted")
        n_iter = batch.n_iter if batch.n_iter is not None else (torch.zeros(n, dtype=torch.long)
                                                                if batch.mode == "amortized" else None)
        if n_iter is None:
            return
        self.n_iter_rows += n
        self.n_iter_sum += float(n_iter.double().sum())
        if batch.mode is None or batch.flops is not None:
            return
        flops = flops_per_row(batch.mode, n_iter, batch.x.shape[1], batch.codes.shape[1])
        if flops is None:
            self.no_flop_model.add(batch.mode)
            return
        self.flops += float(flops.sum())
        self.n_flops += n
        self.flops_source.add("formula")

    def merge(self, other: Metric) -> "CostMetric":
        self._check_mergeable(other)
        assert isinstance(other, CostMetric)
        for name in ("n", "n_timed", "seconds", "n_flops", "flops", "n_iter_rows", "n_iter_sum"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.modes |= other.modes
        self.no_flop_model |= other.no_flop_model
        self.flops_source |= other.flops_source
        return self

    def compute(self) -> dict[str, float | None]:
        values: dict[str, float | None] = {
            "seconds_per_token": self.seconds / self.n_timed if self.n_timed else None,
            "flops_per_token": self.flops / self.n_flops if self.n_flops else None,
            "n_iter_mean": self.n_iter_sum / self.n_iter_rows if self.n_iter_rows else None,
            "n_tokens": float(self.n),
        }
        skipped: dict[str, str] = {}
        if not self.n_timed:
            skipped["seconds_per_token"] = "no timing was supplied (MetricBatch.seconds)"
        if not self.n_iter_rows:
            skipped["n_iter_mean"] = "no iteration counts were supplied (MetricBatch.n_iter)"
        if not self.n_flops:
            if self.no_flop_model:
                skipped["flops_per_token"] = f"no FLOP model for mode {', '.join(sorted(self.no_flop_model))}"
            else:
                skipped["flops_per_token"] = "mode or iteration counts missing (MetricBatch.mode, n_iter)"
        return self._result(values, skipped)

    def artifacts(self) -> dict[str, Any]:
        return {"modes": sorted(self.modes), "flops_source": sorted(self.flops_source)}


register_metric(CostMetric.name, CostMetric)
