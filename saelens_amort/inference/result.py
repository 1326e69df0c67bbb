"""What every inference mode returns, the options it receives, and the shared objective (DESIGN §2–3).

    F(u; x) = ½ ‖x' − u A‖² + λ ‖u‖₁ ,  u ≥ 0      (unit-atom space, u = z · norms; accumulated in fp32)

A mode is a function `fn(x, dictionary, options) -> InferenceResult` (see `ModeFn`); `infer` validates inputs,
resolves λ / k, times the call and fills `seconds`, `mode` and `lam` itself, so a mode only computes codes.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from saelens_amort.errors import SaeAmortError
from saelens_amort.inference.sparse_codes import row_sums, to_csr

if TYPE_CHECKING:
    from saelens_amort.inference.flops import Flops
    from saelens_amort.saes.dictionary import Dictionary

INIT_NAMES = ("encoder", "alista", "zero")
"""Named initialisations a mode may accept for `init` (besides a tensor of SAE codes [N, d_sae])."""


class InferenceResult(NamedTuple):
    codes: Float[Tensor, "N d_sae"]
    """Codes in the SAE's own code space (z = u / norms), so `sae.decode(codes)` reconstructs."""
    n_iter: Int[Tensor, " N"]
    """Iterations spent per row (0 for amortized)."""
    objective: Float[Tensor, " N"]
    """fp32 F(u; x) at `lam` (NaN when λ is unknown)."""
    converged: Bool[Tensor, " N"]
    """Per row: the mode's stopping rule was met (always True for one-shot modes)."""
    lam: float | None
    """The λ the objective is measured at (None if the mode has none and none was given)."""
    seconds: float
    """Wall time of the mode call (filled by `infer`)."""
    mode: str
    """Registered mode name (filled by `infer`)."""
    info: dict
    """Anything else: calibration record, dropped rows, restarts, traces, …"""


@dataclass(frozen=True)
class ModeOptions:
    """The validated options a mode function receives. `infer` keyword arguments map onto these fields."""

    lam: float | None = None
    """L1 weight λ > 0 (already calibrated by `infer` when the mode needs one and none was given)."""
    steps: int | None = None
    """Iteration budget (semi: K steps, default 10; unamortized: max_iter, default 200). None = the mode's default."""
    tol: float = 1e-4
    """Per-row stopping tolerance on the relative objective change (0 = always run `steps`)."""
    k: int | None = None
    """Target number of active latents per row (OMP / MP)."""
    init: str | Tensor | None = None
    """Initial code: None (the mode's default), 'encoder', 'alista', 'zero', or SAE codes [N, d_sae]."""
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """Mode-specific options (e.g. solver='ista', return_trace=True)."""

    def __post_init__(self) -> None:
        if self.lam is not None:
            if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or not math.isfinite(self.lam):
                raise SaeAmortError(f"lam must be a positive finite number, got {self.lam!r}")
            if self.lam <= 0:
                raise SaeAmortError(f"lam must be > 0, got {self.lam}")
            object.__setattr__(self, "lam", float(self.lam))
        if self.steps is not None and (not _is_int(self.steps) or self.steps < 0):
            raise SaeAmortError(f"steps must be a non-negative integer, got {self.steps!r}")
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) or not (self.tol >= 0):
            raise SaeAmortError(f"tol must be a non-negative number, got {self.tol!r}")
        if self.k is not None and (not _is_int(self.k) or self.k <= 0):
            raise SaeAmortError(f"k must be a positive integer, got {self.k!r}")
        for name in ("steps", "k"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, int(getattr(self, name)))
        if self.init is not None and not isinstance(self.init, Tensor) and self.init not in INIT_NAMES:
            names = ", ".join(INIT_NAMES)
            raise SaeAmortError(f"init must be one of {names} or a tensor of SAE codes, got {self.init!r}")
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))

    def option(self, name: str, default: Any = None) -> Any:
        """A mode-specific option from `extra`, or `default`."""
        return self.extra.get(name, default)


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


@dataclass(frozen=True)
class SolveOutput:
    """What a lasso solver (dense FISTA/ISTA, working set) returns for one batch of rows."""

    u: Float[Tensor, "N d_sae"]
    """Unit-atom codes."""
    n_iter: Int[Tensor, " N"]
    objective: Float[Tensor, " N"]
    """F at u, in the accumulation dtype (≥ fp32)."""
    converged: Bool[Tensor, " N"]
    restarts: Int[Tensor, " N"]
    """Momentum restarts per row (rejected steps and gradient restarts)."""
    trace: Float[Tensor, "T N"] | None = None
    """F per row after each iteration (row 0 = the start), when asked for."""
    flops: "Flops | None" = None
    """The FLOPs the solver ran per row (`flops.py`)."""


ModeFn = Callable[[Float[Tensor, "N d_in"], "Dictionary", ModeOptions], InferenceResult]
"""A mode: raw activations x [N, d_in], the dictionary view, validated options → result."""


@torch.no_grad()
def objective(
    x_target: Float[Tensor, "N d_in"], u: Float[Tensor, "N d_sae"], dictionary: "Dictionary", lam: float | None,
    *, flops: "Flops | None" = None,
) -> Float[Tensor, " N"]:
    """F(u; x) = ½‖x' − uA‖² + λ‖u‖₁ per row, in fp32. `x_target` is `dictionary.target(x)`; u are unit-atom codes.
    uA is a sparse product on CPU (charged to `flops` when given); without λ, F is NaN and nothing is computed."""
    if lam is None:
        return torch.full((u.shape[0],), float("nan"), dtype=torch.float32, device=u.device)
    atoms = dictionary.atoms.float()
    u32 = to_csr(u.float())
    if flops is not None:
        flops.product(u32, atoms.shape[1])
    residual = x_target.float() - u32 @ atoms
    return objective_from_residual(residual, u32, lam)


def objective_from_residual(
    residual: Float[Tensor, "N d_in"], u: Float[Tensor, "N d_sae"], lam: float | None
) -> Float[Tensor, " N"]:
    """F from an already computed residual x' − uA (solvers reuse the residual they have). The penalty is λ‖u‖₁:
    signed codes (e.g. abs-TopK encoders) pay for their negative entries too."""
    data = 0.5 * residual.float().square().sum(dim=-1)
    if lam is None:
        return torch.full_like(data, float("nan"))
    if u.layout == torch.sparse_csr:
        return data + lam * row_sums(u.abs()).float()
    return data + lam * u.float().abs().sum(dim=-1)


def make_result(
    codes: Tensor,
    objective: Tensor,
    *,
    n_iter: Tensor | None = None,
    converged: Tensor | None = None,
    lam: float | None = None,
    info: dict | None = None,
) -> InferenceResult:
    """An InferenceResult with one-shot defaults (0 iterations, converged); `infer` fills seconds and mode."""
    n = codes.shape[0]
    if n_iter is None:
        n_iter = torch.zeros(n, dtype=torch.long, device=codes.device)
    if converged is None:
        converged = torch.ones(n, dtype=torch.bool, device=codes.device)
    return InferenceResult(
        codes=codes,
        n_iter=n_iter,
        objective=objective.float(),
        converged=converged,
        lam=lam,
        seconds=0.0,
        mode="",
        info=dict(info or {}),
    )
