"""What `saeamort eval` compares and how (DESIGN §9): the variants (mode, its options, `+refit`), the protocol, and
the price decomposition at the encoder's operating point.

- protocol 'fair' (default): every λ-mode gets its own λ, calibrated by running that mode exactly as evaluated;
  solvers run to their tolerance. The default modes are the encoder, the encoder refitted on its own support, the
  paper's L1 semi / unamortized and the prior-matched semi_ksparse / ksparse.
- protocol 'paper': the reference choices exactly — one λ shared by every mode, calibrated so the unamortized
  codes' dense rate at 0.1 matches the encoder's, plain ISTA, exactly `semi_steps` (default 30) semi and 200 unamortized
  steps (tol 0), modes amortized / semi / unamortized.

Price decomposition (per SAE, when the rows exist): magnitude = encoder − `amortized+refit` (NNLS on the encoder's
own support), support = `amortized+refit` − the best of semi_ksparse / ksparse (lowest NMSE; same per-row L0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROTOCOLS = ("fair", "paper")
LAMBDA_POLICIES = ("per-mode", "shared")
REFIT = "+refit"
"""Mode-name suffix: the mode's codes refitted by NNLS on their support (`infer(..., refit=True)`)."""
DEFAULT_MODES = ("amortized", "amortized+refit", "semi", "unamortized", "semi_ksparse", "ksparse")
PAPER_MODES = ("amortized", "semi", "unamortized")
PAPER_TARGET = "dense@0.1"
PAPER_UNAMORTIZED_STEPS = 200
PAPER_SOLVER = "ista"
MATCH_TOL = 0.05
"""A row's density matches the target within this relative tolerance."""
PRICE_METRICS = {"nmse": "nmse", "fvu": "fvu", "ce": "ce_spliced", "kl": "kl"}
"""Column suffix → the row metric the price is measured in."""
PRIOR_MATCHED = ("semi_ksparse", "ksparse")


@dataclass(frozen=True)
class Variant:
    """One row of the comparison: a registered mode, its solver options, and whether its codes are refitted."""

    label: str
    mode: str
    steps: int | None = None
    tol: float | None = None
    """Solver tolerance (None: the mode's default; 0: exactly `steps` steps)."""
    solver: str | None = None
    refit: bool = False

    @property
    def solve_options(self) -> dict[str, Any]:
        """Options that change the solve (and so the calibrated λ)."""
        out: dict[str, Any] = {}
        if self.steps is not None:
            out["steps"] = self.steps
        if self.tol is not None:
            out["tol"] = self.tol
        if self.solver is not None:
            out["solver"] = self.solver
        return out

    @property
    def options(self) -> dict[str, Any]:
        """Everything passed to `infer` besides x, the SAE, the mode, λ and init."""
        return {**self.solve_options, **({"refit": True} if self.refit else {})}

    @property
    def calibration_key(self) -> tuple:
        """What a λ calibration depends on: variants with equal keys share one."""
        return (self.mode, tuple(sorted(self.options.items())))

    @property
    def calibration_options(self) -> dict[str, Any]:
        """The same solve (and refit) as options for `calibrate_lambda` (its own `tol` is the density tolerance)."""
        out = dict(self.options)
        if "tol" in out:
            out["solver_tol"] = out.pop("tol")
        return out


def split_mode(name: str) -> tuple[str, bool]:
    """'semi+refit' → ('semi', True)."""
    return (name[: -len(REFIT)], True) if name.endswith(REFIT) else (name, False)


def make_variants(modes: tuple[str, ...], semi_steps: int, semi_sweep: tuple[int, ...], protocol: str) -> list[Variant]:
    """Each mode once (semi once per K of a sweep, each exactly K steps); the paper protocol's ISTA step counts."""
    paper = protocol == "paper"
    out = []
    for name in modes:
        mode, refit = split_mode(name)
        suffix = REFIT if refit else ""
        if mode == "semi" and semi_sweep:
            out += [Variant(f"semi@{k}{suffix}", "semi", k, 0.0, PAPER_SOLVER if paper else None, refit)
                    for k in semi_sweep]
        elif mode == "semi":
            out.append(Variant(name, mode, semi_steps, 0.0 if paper else None, PAPER_SOLVER if paper else None, refit))
        elif mode == "unamortized" and paper:
            out.append(Variant(name, mode, PAPER_UNAMORTIZED_STEPS, 0.0, PAPER_SOLVER, refit))
        else:
            out.append(Variant(name, mode, refit=refit))
    return out


def density_metric(target: str) -> str:
    """The row metric a λ target matches: 'l0' → 'l0', 'dense@0.1' → 'dense_rate@0.1'."""
    return "l0" if target == "l0" else f"dense_rate@{float(target.split('@', 1)[1]):g}"


def density_columns(rows: list[dict], metric: str, fallback_target: float | None) -> None:
    """Give every row of one SAE density_target / density_achieved / density_matched, measured on the evaluated
    rows: the target is the amortized row's density (the calibration slice's when no amortized row ran); a
    mismatch is stated in the row's `skipped`."""
    amortized = [r for r in rows if r["mode"] == "amortized" and r.get(metric) is not None]
    target = amortized[0][metric] if amortized else fallback_target
    for row in rows:
        achieved = row.get(metric)
        matched = None if achieved is None or target is None else abs(achieved - target) <= MATCH_TOL * target
        row.update(density_metric=metric, density_target=target, density_achieved=achieved, density_matched=matched)
        if matched is False:
            why = f"{metric} {achieved:.4g} vs target {target:.4g} (more than {MATCH_TOL:.0%} off)"
            row["skipped"] = "; ".join(filter(None, [row["skipped"], f"matched density: {why}"]))


def price_columns(rows: list[dict]) -> dict[str, float]:
    """The price of amortization decomposed (module docstring), per metric of PRICE_METRICS that the rows carry;
    empty when the encoder, its refit or a prior-matched row is missing."""
    by_mode = {r["mode"]: r for r in rows}
    enc, refit = by_mode.get("amortized"), by_mode.get("amortized" + REFIT)
    candidates = [by_mode[m] for m in PRIOR_MATCHED if m in by_mode and by_mode[m].get("nmse") is not None]
    if enc is None or refit is None or not candidates:
        return {}
    best = min(candidates, key=lambda r: r["nmse"])
    out: dict[str, Any] = {"price_best_mode": best["mode"]}
    for suffix, metric in PRICE_METRICS.items():
        values = [r.get(metric) for r in (enc, refit, best)]
        if all(isinstance(v, (int, float)) for v in values):
            out[f"price_magnitude_{suffix}"] = values[0] - values[1]
            out[f"price_support_{suffix}"] = values[1] - values[2]
    return out
