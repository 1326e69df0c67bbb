"""What `saeamort frontier` is asked to do: the FrontierConfig (an EvalConfig plus the density grids), checked when
built and importable without torch, so a bad option answers at once."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from saelens_amort.errors import SaeAmortError
from saelens_amort.runners.eval_config import EvalConfig


MAX_GRID = 1000
"""Most λ values a frontier sweeps per L1 mode (each is a full solve of every row)."""


@dataclass(frozen=True)
class FrontierConfig:
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Model, SAEs, modes, tokens, … exactly as for `saeamort eval`."""
    n_lambdas: int = 10
    """λ values per L1 mode: geometric from λ_max (all codes zero) to λ_max / lambda_ratio."""
    lambda_ratio: float = 300.0
    """λ_max / the smallest λ of the default grid. The L1-trained toy SAEs match their encoder's L0 near λ_max/150
    (toy/standard 0.71 of λ_max ≈ 105), so a grid ending at λ_max/100 never reached the encoder's point."""
    lambdas: tuple[float, ...] = ()
    """Explicit λ grid instead of the default."""
    k_multipliers: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
    """k grid = round(encoder L0 × each), clipped to [1, d_sae] (k-sparse modes and a TopK encoder's own k)."""
    ks: tuple[int, ...] = ()
    """Explicit k grid instead of the multipliers (k-sparse modes and a TopK encoder's own k, which also runs at its
    trained k)."""
    threshold_scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.5, 2.0)
    """Factors on a JumpReLU encoder's thresholds."""

    def __post_init__(self) -> None:
        if not 1 <= self.n_lambdas <= MAX_GRID or not 1 < self.lambda_ratio < math.inf:
            raise SaeAmortError(f"--n-lambdas must be in [1, {MAX_GRID}] and --lambda-ratio a finite number > 1")
        for name, grid in (("--k-multipliers", self.k_multipliers), ("--threshold-scales", self.threshold_scales)):
            if not grid:
                raise SaeAmortError(f"{name} is empty: give at least one value")
            if any(not 0 < v < math.inf for v in grid):
                raise SaeAmortError(f"{name} must be positive finite numbers, got {list(grid)}")
        if any(not 0 < v < math.inf for v in self.lambdas):
            raise SaeAmortError(f"--lambdas must be positive finite numbers, got {list(self.lambdas)}")
        if any(k <= 0 for k in self.ks):
            raise SaeAmortError(f"--ks must be positive integers (1 … d_sae), got {list(self.ks)}")

    def check_sae(self, sae) -> None:
        """Refuse an explicit k grid the SAE cannot take (before any work)."""
        too_big = [k for k in self.ks if k > sae.cfg.d_sae]
        if too_big:
            raise SaeAmortError(f"--ks {too_big} exceed the SAE's d_sae={sae.cfg.d_sae}")

    def as_json(self) -> dict:
        return json.loads(json.dumps({**asdict(self), "eval": self.eval.as_json()}, default=str))
