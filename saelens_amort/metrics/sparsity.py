"""Sparsity: L0, firing frequencies, dead and dense rates (DESIGN §4).

    L0          = mean_t #{j : z_tj ≠ 0}
    f_j         = #{t : z_tj > 0} / #tokens                         (firing frequency of latent j)
    dead rate   = frac_j (f_j ≤ 1e-6)
    dense@τ     = frac_j (f_j ≥ τ),  τ ∈ {0.1, 0.2}

State: the token count, Σ L0 (fp64) and per-latent firing counts (int64, O(d_sae)); all exact under merge. The
log10 f histogram is derived from the counts with fixed bins `LOG10_FREQ_EDGES` (latents that never fired are
counted apart, as `never_fired`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from saelens_amort.metrics.registry import Metric, MetricBatch, check_batch, register_metric

DEAD_THRESHOLD = 1e-6
"""A latent with f_j ≤ this is dead."""

DENSE_THRESHOLDS = (0.1, 0.2)
"""τ of the dense rates."""

LOG10_FREQ_EDGES: tuple[float, ...] = tuple(-8 + 0.25 * i for i in range(33))
"""Fixed bin edges of the log10 firing-frequency histogram: −8 … 0 in quarter decades (f below 1e-8 lands in the
first bin, f = 1 in the last)."""


class SparsityMetric(Metric):
    """L0, dead rate and dense rates; firing frequencies and their histogram as artifacts."""

    name = "sparsity"

    def __init__(self, dead_threshold: float = DEAD_THRESHOLD, dense_thresholds: tuple[float, ...] = DENSE_THRESHOLDS):
        super().__init__()
        self.dead_threshold = float(dead_threshold)
        self.dense_thresholds = tuple(float(t) for t in dense_thresholds)
        self.n = 0
        self.l0_sum = 0.0
        self.fire_counts: Tensor | None = None
        """Per latent: tokens with z_j > 0 (int64)."""

    def _options(self) -> dict[str, Any]:
        return {"dead_threshold": self.dead_threshold, "dense_thresholds": self.dense_thresholds}

    def update(self, batch: MetricBatch) -> None:
        codes = check_batch(batch).codes
        self._fold(codes.shape[0], float((codes != 0).sum()), (codes > 0).sum(dim=0, dtype=torch.int64).cpu())

    def _fold(self, n: int, l0_sum: float, counts: Tensor) -> None:
        if self.fire_counts is None:
            self.fire_counts = torch.zeros_like(counts)
        elif counts.shape != self.fire_counts.shape:
            raise ValueError(f"d_sae changed from {self.fire_counts.shape[0]} to {counts.shape[0]}")
        self.fire_counts += counts
        self.n += n
        self.l0_sum += l0_sum

    def merge(self, other: Metric) -> "SparsityMetric":
        self._check_mergeable(other)
        assert isinstance(other, SparsityMetric)
        if other.fire_counts is not None:
            self._fold(other.n, other.l0_sum, other.fire_counts)
        return self

    def frequencies(self) -> Tensor | None:
        """f_j per latent (fp64), or None before any token."""
        if self.fire_counts is None or self.n == 0:
            return None
        return self.fire_counts.double() / self.n

    def _keys(self) -> list[str]:
        return ["l0", "dead_rate", *(f"dense_rate@{t:g}" for t in self.dense_thresholds), "n_tokens"]

    def compute(self) -> dict[str, float | None]:
        f = self.frequencies()
        if f is None:
            return self._result({k: None for k in self._keys()} | {"n_tokens": 0.0},
                                {k: "no tokens" for k in self._keys() if k != "n_tokens"})
        values: dict[str, float | None] = {
            "l0": self.l0_sum / self.n,
            "dead_rate": float((f <= self.dead_threshold).double().mean()),
        }
        for t in self.dense_thresholds:
            values[f"dense_rate@{t:g}"] = float((f >= t).double().mean())
        values["n_tokens"] = float(self.n)
        return self._result(values, {})

    def artifacts(self) -> dict[str, Any]:
        f = self.frequencies()
        if f is None:
            return {}
        return {"firing_frequency": f, "log10_frequency_histogram": log10_histogram(f)}


def log10_histogram(f: Tensor) -> dict[str, Any]:
    """Counts of log10 f_j in the fixed `LOG10_FREQ_EDGES` bins (right edge of the last bin included); latents with
    f_j = 0 are counted as `never_fired`."""
    edges = torch.tensor(LOG10_FREQ_EDGES, dtype=torch.float64)
    fired = f[f > 0].double()
    logs = fired.log10().clamp(min=edges[0].item(), max=edges[-1].item())
    idx = torch.bucketize(logs, edges, right=True).sub(1).clamp(0, len(edges) - 2)
    counts = torch.bincount(idx, minlength=len(edges) - 1)
    return {"edges": list(LOG10_FREQ_EDGES), "counts": counts.tolist(), "never_fired": int((f == 0).sum())}


register_metric(SparsityMetric.name, SparsityMetric)
