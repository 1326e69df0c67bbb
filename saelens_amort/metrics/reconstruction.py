"""Reconstruction: NMSE (the paper's) and FVU about the mean (DESIGN §4).

    NMSE = mean_t ‖x_t − x̂_t‖² / mean_t ‖x_t‖²            (uncentred: the paper's definition)
    FVU  = Σ_t ‖x_t − x̂_t‖² / Σ_t ‖x_t − x̄‖²               (x̄ = mean over tokens; 1 − explained variance)
    MSE  = mean_t ‖x_t − x̂_t‖²

State (fp64, O(d_in)): token count, Σ‖x − x̂‖², Σ‖x‖², and per dimension the running mean and centred sum of squares
of x, merged with Chan et al.'s pairwise update — exact (no E[x²] − E[x]² cancellation) and order-independent up to
rounding.
"""

from __future__ import annotations

from torch import Tensor

from saelens_amort.metrics.registry import Metric, MetricBatch, check_batch, register_metric


class ReconstructionMetric(Metric):
    """NMSE, FVU and MSE of the reconstruction in x's space."""

    name = "reconstruction"

    def __init__(self) -> None:
        super().__init__()
        self.n = 0
        self.sse = 0.0
        """Σ‖x − x̂‖² (fp64)."""
        self.sum_sq = 0.0
        """Σ‖x‖² (fp64)."""
        self.mean: Tensor | None = None
        """Per-dimension mean of x (fp64)."""
        self.m2: Tensor | None = None
        """Per-dimension Σ (x − mean)² (fp64)."""

    def update(self, batch: MetricBatch) -> None:
        batch = check_batch(batch)
        x = batch.x.double()
        if x.shape[0] == 0:
            return
        err = x - batch.recon.double()
        mean = x.mean(dim=0)
        m2 = (x - mean).square().sum(0)
        self._fold(x.shape[0], float(err.square().sum()), float(x.square().sum()), mean.cpu(), m2.cpu())

    def _fold(self, n: int, sse: float, sum_sq: float, mean: Tensor, m2: Tensor) -> None:
        if n == 0:
            return
        if self.mean is None or self.m2 is None:
            self.mean, self.m2 = mean.clone(), m2.clone()
        else:
            if mean.shape != self.mean.shape:
                raise ValueError(f"d_in changed from {self.mean.shape[0]} to {mean.shape[0]}")
            total = self.n + n
            delta = mean - self.mean
            self.mean = self.mean + delta * (n / total)
            self.m2 = self.m2 + m2 + delta.square() * (self.n * n / total)
        self.n += n
        self.sse += sse
        self.sum_sq += sum_sq

    def merge(self, other: Metric) -> "ReconstructionMetric":
        self._check_mergeable(other)
        assert isinstance(other, ReconstructionMetric)
        if other.mean is not None and other.m2 is not None:
            self._fold(other.n, other.sse, other.sum_sq, other.mean, other.m2)
        return self

    def compute(self) -> dict[str, float | None]:
        values: dict[str, float | None] = {"nmse": None, "fvu": None, "mse": None, "n_tokens": float(self.n)}
        skipped: dict[str, str] = {}
        if self.n == 0 or self.m2 is None:
            return self._result(values, {k: "no tokens" for k in ("nmse", "fvu", "mse")})
        values["mse"] = self.sse / self.n
        if self.sum_sq > 0:
            values["nmse"] = self.sse / self.sum_sq
        else:
            skipped["nmse"] = "activations are all zero"
        variance = float(self.m2.sum())
        if variance > 0:
            values["fvu"] = self.sse / variance
        else:
            skipped["fvu"] = "activations have zero variance"
        return self._result(values, skipped)


register_metric(ReconstructionMetric.name, ReconstructionMetric)
