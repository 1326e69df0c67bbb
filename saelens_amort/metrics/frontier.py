"""Density frontiers and the price of amortization read off them (DESIGN §9).

A frontier is a mode's (L0, NMSE) points over its density knob. Knob grids:

- λ (L1 modes): geometric from λ_max down to λ_max / `ratio`, where λ_max = max over rows and atoms of x′·a_j is the
  smallest λ whose non-negative lasso codes are all zero (u = 0 is optimal iff x′Aᵀ ≤ λ elementwise);
- k (k-sparse modes, an encoder's TopK k): a reference L0 times multipliers, rounded, clipped to [1, d_sae], distinct.

Prices at the encoder's point (L0_e, NMSE_e), by linear interpolation in log–log between the two bracketing frontier
points (points with L0 = 0 or NMSE = 0 have no logarithm and are left out):

    nmse_ratio = NMSE_e / NMSE_mode(L0_e)        (> 1: the mode reconstructs better at the encoder's density)
    l0_needed  = L0_mode(NMSE_e),  l0_ratio = L0_e / l0_needed   (> 1: the mode needs fewer latents)

When L0_e (or NMSE_e) lies outside the frontier's range, the price is "not reached" (None, with the reason).
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
    """y at x0 by linear interpolation of log y against log x between the first bracketing pair of consecutive points
    (in the given order); None when no pair brackets x0 or x0 ≤ 0. Points with x ≤ 0 or y ≤ 0 are left out."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys)
           if x is not None and y is not None and x > 0 and y > 0 and math.isfinite(x) and math.isfinite(y)]
    if x0 is None or not x0 > 0:
        return None
    t = math.log(x0)
    for (xa, ya), (xb, yb) in zip(pts, pts[1:]):
        if min(xa, xb) <= t <= max(xa, xb):
            w = 0.0 if xa == xb else (t - xa) / (xb - xa)
            return math.exp(ya + w * (yb - ya))
    return None


def price(l0: Sequence[float], nmse: Sequence[float], encoder_l0: float, encoder_nmse: float) -> Price:
    """Prices of one mode's frontier (points in any order) at the encoder's point (module docstring)."""
    order = np.argsort(np.asarray(l0, dtype=float), kind="stable")
    l0s = [float(l0[i]) for i in order]
    nmses = [float(nmse[i]) for i in order]
    at_l0 = interpolate_loglog(l0s, nmses, encoder_l0)
    needed = interpolate_loglog(nmses, l0s, encoder_nmse)
    notes = []
    if at_l0 is None:
        notes.append(f"NMSE at L0 {encoder_l0:.4g}: {NOT_REACHED} (frontier L0 spans {_span(l0s)})")
    if needed is None:
        notes.append(f"L0 at NMSE {encoder_nmse:.4g}: {NOT_REACHED} (frontier NMSE spans {_span(nmses)})")
    return Price(
        nmse_at_encoder_l0=at_l0,
        nmse_ratio=encoder_nmse / at_l0 if at_l0 else None,
        l0_needed=needed,
        l0_ratio=encoder_l0 / needed if needed else None,
        note="; ".join(notes),
    )


def _span(values: Sequence[float]) -> str:
    good = [v for v in values if v > 0 and math.isfinite(v)]
    return f"{min(good):.4g}–{max(good):.4g}" if good else "nothing positive"
