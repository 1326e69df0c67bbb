"""Amortization gap: per token Δ = F(z; x) − F(z*; x) at the same λ (DESIGN §4).

z are the mode's codes (`MetricBatch.objective`), z* converged unamortized codes (`MetricBatch.objective_star`, from
`infer(x, sae, "unamortized", lam=λ, tol=small)`). Reported: `gap_mean` (exact, fp64 sums), `gap_median` (exact over
the first `max_sample` tokens in stream order — all of them up to 2**20 — so a merge of first-N samples equals one
pass), `gap_relative` = ΣΔ / ΣF(z*), and `frac_negative`: the fraction of tokens with Δ < −1e-6·|F(z*)|, where z* was
not converged (it should be ≈ 0; a large value means the reference needs a smaller tol or more iterations).

Rows without both objectives, or with a NaN one (no λ), are left out (`n_tokens` counts the rest); when none is
left every value is skipped with the reason.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from saelens_amort.metrics.registry import Metric, MetricBatch, check_batch, register_metric

MAX_SAMPLE = 1 << 20
"""Δ values kept for the median (4 MiB in fp32)."""

NEGATIVE_RTOL = 1e-6
"""Δ < −NEGATIVE_RTOL·|F(z*)| counts as negative (the reference was not at the optimum)."""

_KEYS = ("gap_mean", "gap_median", "gap_relative", "frac_negative")


class GapMetric(Metric):
    """Mean, median and relative amortization gap against converged unamortized objectives."""

    name = "gap"

    def __init__(self, max_sample: int = MAX_SAMPLE) -> None:
        super().__init__()
        self.max_sample = int(max_sample)
        self.n = 0
        self.n_no_star = 0
        """Rows that came without objective or objective_star."""
        self.n_nan = 0
        """Rows with a NaN/inf objective or objective_star (no λ)."""
        self.sum_delta = 0.0
        self.sum_star = 0.0
        self.n_negative = 0
        self.sample: list[Tensor] = []
        self.n_sample = 0

    def _options(self) -> dict[str, Any]:
        return {"max_sample": self.max_sample}

    def update(self, batch: MetricBatch) -> None:
        batch = check_batch(batch)
        if batch.objective is None or batch.objective_star is None:
            self.n_no_star += batch.n_rows
            return
        obj, star = batch.objective.double(), batch.objective_star.double()
        ok = torch.isfinite(obj) & torch.isfinite(star)
        self.n_nan += int((~ok).sum())
        delta, star = (obj - star)[ok], star[ok]
        self._fold(delta.shape[0], float(delta.sum()), float(star.sum()),
                   int((delta < -NEGATIVE_RTOL * star.abs()).sum()), [delta.float().cpu()])

    def _fold(self, n: int, sum_delta: float, sum_star: float, n_negative: int, sample: list[Tensor]) -> None:
        self.n += n
        self.sum_delta += sum_delta
        self.sum_star += sum_star
        self.n_negative += n_negative
        for part in sample:
            room = self.max_sample - self.n_sample
            if room <= 0:
                break
            part = part[:room]
            self.sample.append(part)
            self.n_sample += part.shape[0]

    def merge(self, other: Metric) -> "GapMetric":
        self._check_mergeable(other)
        assert isinstance(other, GapMetric)
        self.n_no_star += other.n_no_star
        self.n_nan += other.n_nan
        self._fold(other.n, other.sum_delta, other.sum_star, other.n_negative, other.sample)
        return self

    def compute(self) -> dict[str, float | None]:
        values: dict[str, float | None] = dict.fromkeys(_KEYS)
        values["n_tokens"] = float(self.n)
        if self.n == 0:
            why = "no tokens"
            if self.n_nan:
                why = "the objectives are NaN (no λ was given)"
            elif self.n_no_star:
                why = "no converged unamortized objective (objective_star) was supplied"
            return self._result(values, dict.fromkeys(_KEYS, why))
        deltas = torch.cat(self.sample)
        values["gap_mean"] = self.sum_delta / self.n
        values["gap_median"] = float(deltas.double().quantile(0.5)) if deltas.numel() else None
        values["frac_negative"] = self.n_negative / self.n
        skipped: dict[str, str] = {}
        if self.sum_star > 0:
            values["gap_relative"] = self.sum_delta / self.sum_star
        else:
            skipped["gap_relative"] = "the converged objective is zero"
        return self._result(values, skipped)

    def artifacts(self) -> dict[str, Any]:
        return {"gap_sample": torch.cat(self.sample)} if self.sample else {}


register_metric(GapMetric.name, GapMetric)
