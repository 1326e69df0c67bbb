"""Density frontiers and the price of amortization read off them (DESIGN §9).

A frontier is a mode's (L0, NMSE) points over its density knob. Knob grids:

- λ (L1 modes): geometric from λ_max down to λ_max / `ratio`, where λ_max = max over rows and atoms of x′·a_j is the
  smallest λ whose non-negative lasso codes are all zero (u = 0 is optimal iff x′Aᵀ ≤ λ elementwise);
- k (k-sparse modes, an encoder's TopK k): a reference L0 times multipliers, rounded, clipped to [1, d_sae], distinct.

Prices at the encoder's point (L0_e, NMSE_e), by linear interpolation in log–log between the two bracketing frontier
points (points with L0 = 0 or NMSE = 0 have no logarithm and are left out):

    nmse_ratio = NMSE_e / NMSE_mode(L0_e)        (> 1: the mode reconstructs better at the encoder's density)
    l0_needed  = L0_mode(NMSE_e),  l0_ratio = L0_e / l0_needed   (> 1: the mode needs fewer latents)

Points at equal L0 count once, at their lowest NMSE (the frontier is what the mode can reach). A non-monotone frontier
is read at its first crossing in increasing L0: `l0_needed` is the least L0 at which the mode reaches NMSE_e. When
L0_e (or NMSE_e) lies outside the frontier's range, the price is "not reached" (None, with the reason); a point exactly
at the target is read as it is (a one-point frontier has a price only there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

NOT_REACHED = "not reached"


def lambda_max(x_target: Float[Tensor, "N d_in"], atoms: Float[Tensor, "d_sae d_in"]) -> float:
    """The smallest λ at which every row's non-negative lasso code is zero: max over rows and atoms of x′·a_j."""
    acc = torch.promote_types(atoms.dtype, torch.float32)
    return float((x_target.to(acc) @ atoms.to(acc).T).max())


def lambda_grid(lam_max: float, n: int, ratio: float) -> tuple[float, ...]:
    """`n` λ values, geometric from `lam_max` down to `lam_max / ratio` (densest last)."""
    return tuple(float(v) for v in np.geomspace(lam_max, lam_max / ratio, n))


def k_grid(reference_l0: float, multipliers: Sequence[float], d_sae: int) -> tuple[int, ...]:
    """round(reference_l0 × m) for each multiplier, clipped to [1, d_sae], distinct, ascending."""
    return tuple(sorted({min(d_sae, max(1, round(reference_l0 * m))) for m in multipliers}))


class Price(NamedTuple):
    """The price of amortization at the encoder's point, read off one mode's frontier."""

    nmse_at_encoder_l0: float | None
    nmse_ratio: float | None
    """NMSE_encoder / NMSE_mode at the encoder's L0."""
    l0_needed: float | None
    """L0 the mode needs to match the encoder's NMSE."""
    l0_ratio: float | None
    """L0_encoder / l0_needed."""
    note: str
    """Why a price is missing ("" when both exist)."""


def interpolate_loglog(xs: Sequence[float], ys: Sequence[float], x0: float) -> float | None:
    """y at x0, walking the points in the given order: the first point exactly at x0, or the first consecutive pair
    that brackets x0 (linear interpolation of log y against log x), whichever comes first; None when none does or
    x0 ≤ 0. Points with x ≤ 0 or y ≤ 0 (or not finite) are left out."""
    pts = _loggable(xs, ys)
    if x0 is None or not x0 > 0 or not math.isfinite(x0):
        return None
    t = math.log(x0)
    for i, (x, y) in enumerate(pts):
        if x == x0:
            return y
        if i:
            (xa, ya), (xb, yb) = (math.log(v) for v in pts[i - 1]), (math.log(x), math.log(y))
            if min(xa, xb) < t < max(xa, xb):
                return math.exp(ya + (t - xa) / (xb - xa) * (yb - ya))
    return None


def price(l0: Sequence[float], nmse: Sequence[float], encoder_l0: float, encoder_nmse: float) -> Price:
    """Prices of one mode's frontier (points in any order) at the encoder's point (module docstring)."""
    best: dict[float, float] = {}  # L0 → the lowest NMSE at it
    for a, b in zip(l0, nmse):
        a, b = float(a), float(b)
        best[a] = min(b, best.get(a, math.inf))
    l0s = sorted(best)
    nmses = [best[a] for a in l0s]
    at_l0 = interpolate_loglog(l0s, nmses, encoder_l0)
    needed = interpolate_loglog(nmses, l0s, encoder_nmse)
    kept = _loggable(l0s, nmses)
    notes = []
    if at_l0 is None:
        span = _span([p[0] for p in kept])
        notes.append(f"NMSE at L0 {encoder_l0:.4g}: {NOT_REACHED} (frontier L0 spans {span})")
    if needed is None:
        span = _span([p[1] for p in kept])
        notes.append(f"L0 at NMSE {encoder_nmse:.4g}: {NOT_REACHED} (frontier NMSE spans {span})")
    return Price(
        nmse_at_encoder_l0=at_l0,
        nmse_ratio=encoder_nmse / at_l0 if at_l0 else None,
        l0_needed=needed,
        l0_ratio=encoder_l0 / needed if needed else None,
        note="; ".join(notes),
    )


def _loggable(xs: Sequence[float], ys: Sequence[float]) -> list[tuple[float, float]]:
    """The points (x, y) where both are positive and finite (they have logarithms), in order."""
    return [(float(x), float(y)) for x, y in zip(xs, ys)
            if x is not None and y is not None and x > 0 and y > 0 and math.isfinite(x) and math.isfinite(y)]


def _span(values: Sequence[float]) -> str:
    return f"{min(values):.4g}–{max(values):.4g}" if values else "nothing positive"
