"""λ calibration: compare modes at matched density, not matched λ (DESIGN §3).

Bisection in log λ (safeguarded log–log interpolation) until the mode's density matches a target within `tol`:

- target='l0'        the amortized codes' mean L0 on the calibration rows (needs the SAE);
- target='dense@τ'   the amortized fraction of latents with firing frequency ≥ τ (the paper's target);
- target=<number>    an explicit mean L0.

The density target is measured on all the rows given (callers choose the slice: `infer` its first 2048 rows, eval
`--calib-tokens`), on the amortized codes as the amortized mode produced them: pass them as `reference` when the
encoder depends on the batch (training-form BatchTopK), else they come from one encoder pass over the rows.

Density falls as λ grows and vanishes at λ_max = max(x'Aᵀ) (above it every code is 0), so the search brackets
from λ_max downwards. Every evaluation runs the mode exactly as the final call will (same steps, tol, init), since
early-stopped codes depend on where the solver starts: warm starts would calibrate a different procedure.
The search runs on every COARSE_STRIDE-th row first (against those rows' own target), then confirms, and refines by
log–log secant steps where needed, on all rows: the final λ is always measured on every row given. For a mean-L0
target the coarse search starts from the λ at which about that many correlations x'Aᵀ per row stay positive after
one proximal step from zero (`_correlation_guess`), on the sparse, cheap side of the target; otherwise from λ_max / 3.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from jaxtyping import Float
from torch import Tensor

from saelens_amort.errors import SaeAmortError
from saelens_amort.inference.registry import (
    _validate_x,
    get_mode,
    resolve_dictionary,
    run_mode,
)
from saelens_amort.inference.refit import refit_result
from saelens_amort.inference.result import ModeOptions
from saelens_amort.saes.dictionary import Dictionary

if TYPE_CHECKING:
    from sae_lens import SAE

LAM_FLOOR = 1e-7
"""The search gives up below λ_max · LAM_FLOOR."""

NO_CALIBRATION_OPTIONS = ("return_trace",)

BRACKET_FACTOR = 3.0
"""Without a guess, λ steps down from λ_max by this factor until the density passes the target. Small factors never
solve far denser than the target: dense solves are the slowest and largest (a random 4096-wide dictionary at
pythia shape needed minutes and GBs per solve at λ_max/10)."""

COARSE_STRIDE = 8
"""The search first runs on every COARSE_STRIDE-th row (matching those rows' own target), then confirms and refines
on all rows from the λ it found: the wide bracketing steps, whose small λs are the slowest solves, cost 1/8."""
COARSE_MIN_ROWS = 64
"""…when that subset still has at least this many rows."""
COARSE_TOL_FRACTION = 0.5
"""The subset search aims within this fraction of the tolerance, so the confirmation on all rows lands near the
middle of the band: a search from the sparse side that stops at the first λ within the tolerance ends near the
band's lower edge, and the evaluated rows then fall outside it (toy/standard's semi: 0.964 of the target on the
slice, 0.950 on 20 000 rows). Subset solves are cheap; toy, 12 calibrations: 5.1 s at 1, 4.7 s at 0.5."""


class Calibration(NamedTuple):
    lam: float
    """The calibrated λ."""
    target: str | float
    """The target as asked: 'l0', 'dense@τ', or an explicit mean L0."""
    target_value: float
    """The numeric density to match (mean L0, or dense rate)."""
    achieved: float
    """The mode's density at `lam`."""
    n_evals: int
    """Mode evaluations spent."""
    n_rows: int
    """Calibration rows the density was measured on."""


def calibrate_lambda(
    x_cal: Float[Tensor, "... d_in"],
    sae_or_dictionary: "SAE | Dictionary",
    mode: str = "unamortized",
    target: str | float = "l0",
    *,
    tol: float = 0.05,
    steps: int | None = None,
    max_evals: int = 30,
    strict: bool = True,
    reference: Float[Tensor, "... d_sae"] | None = None,
    **options: Any,
) -> Calibration:
    """λ such that `mode`'s density on all rows of `x_cal` matches `target` within relative `tol` (module docstring).

    `options` go to the mode (solver tol, init, solver=…; refit=True measures the density of the refitted codes, as
    `infer(..., refit=True)` returns them). `reference`: the amortized codes of `x_cal` (SAE code
    space, one row per row of x_cal) to take the 'l0' / 'dense@τ' target from; None runs the encoder once on x_cal.
    A target no λ matches within `tol` (e.g. a mean L0 near d_in, above what the lasso gives even at tiny λ, or one
    between two densities the mode jumps across) raises SaeAmortError, or with `strict=False` warns and returns the
    λ that came closest (`achieved` says how close).
    """
    dictionary = resolve_dictionary(sae_or_dictionary)
    x, _, _ = _validate_x(x_cal, dictionary, "raise")
    solver_tol = options.pop("solver_tol", 1e-4)
    init = options.pop("init", None)
    refit = bool(options.pop("refit", False))
    opts = ModeOptions(steps=steps, tol=solver_tol, init=init, extra=options)
    if reference is not None:
        reference = reference.reshape(-1, reference.shape[-1])
    cal, _ = calibrate_options(x, dictionary, mode, opts, target=target, tol=tol, max_evals=max_evals, strict=strict,
                               reference=reference, refit=refit)
    return cal


def mode_lambda(x: Float[Tensor, "... d_in"], sae_or_dictionary: "SAE | Dictionary", mode: str) -> float | None:
    """The λ at which `mode` (run as `infer` runs it by default: semi from the encoder's code) matches the encoder's
    mean L0 on x — each λ-mode its own, as eval calibrates them — or None for a mode without λ. An unreachable target
    keeps the closest λ with a warning."""
    if not get_mode(mode).needs_lambda:
        return None
    return calibrate_lambda(x, sae_or_dictionary, mode, strict=False).lam


def calibrate_options(
    x: Float[Tensor, "N d_in"],
    dictionary: Dictionary,
    mode: str,
    opts: ModeOptions,
    *,
    target: str | float = "l0",
    tol: float = 0.05,
    max_evals: int = 30,
    strict: bool = True,
    reference: Float[Tensor, "N d_sae"] | None = None,
    refit: bool = False,
) -> tuple[Calibration, ModeOptions]:
    """Calibrate λ for `mode` run with `opts` on validated rows x (all of them); returns the record and `opts` with
    λ set. `reference`: the amortized codes of x, as in `calibrate_lambda`; `refit`: the density is the refitted
    codes' (NNLS on the mode's support can drop atoms)."""
    spec = get_mode(mode)
    if not spec.needs_lambda:
        raise SaeAmortError(f"mode {mode!r} takes no λ; calibrate a λ-based mode ({_lambda_modes()})")
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise SaeAmortError(f"calibration tol must be > 0, got {tol!r}")
    if not (isinstance(max_evals, int) and max_evals >= 2):
        raise SaeAmortError(f"max_evals must be an integer ≥ 2, got {max_evals!r}")
    if x.shape[0] == 0:
        raise SaeAmortError("no activation rows to calibrate λ on")
    if reference is not None and tuple(reference.shape) != (x.shape[0], dictionary.d_sae):
        raise SaeAmortError(f"reference codes have shape {tuple(reference.shape)}; expected "
                            f"{(x.shape[0], dictionary.d_sae)} (the amortized codes of the calibration rows)")
    metric, target_value = _target(target, x, dictionary, reference)
    extra = {k: v for k, v in opts.extra.items() if k not in NO_CALIBRATION_OPTIONS}
    base = replace(opts, lam=None, extra=extra)
    if isinstance(base.init, Tensor):
        base = replace(base, init=base.init[: x.shape[0]])

    lam_max = float((dictionary.target(x) @ dictionary.atoms.T).max())
    if not lam_max > 0:
        raise SaeAmortError("every code is zero for every λ > 0 on these rows (max x'Aᵀ ≤ 0); check the activations")
    n_evals = 0

    def density(lam: float, rows: slice | None = None) -> float:
        nonlocal n_evals
        n_evals += 1
        xs, opts_s = (x, base) if rows is None else (x[rows], _rows_of(base, rows))
        result = run_mode(spec, xs, dictionary, replace(opts_s, lam=lam))
        return metric((refit_result(result, xs, dictionary) if refit else result).codes)

    guess = _coarse_guess(x, dictionary, target, reference, tol, lam_max, max_evals, density)
    found = _search(density, target_value, tol, lam_max, max(2, max_evals - n_evals), guess)
    if found.matched:
        return _done(found.lam, target, target_value, found.achieved, n_evals, x.shape[0], opts)
    if not found.bracketed:
        msg = (f"could not bracket the {mode} density target {target_value:.4g} ({target!r}): λ={found.lam:.3g} "
               f"reached {found.achieved:.4g} (λ_max={lam_max:.3g}, {n_evals} evaluations)")
    else:
        why = f"{n_evals} evaluations did not reach" if found.exhausted else "no λ reaches"
        msg = (f"λ calibration for {mode!r}: {why} the density target {target_value:.4g} ({target!r}) ± {tol:.0%}: "
               f"λ={found.lam:.4g} came closest with {found.achieved:.4g}")
    return _closest(msg, strict, (0.0, found.lam, found.achieved), target, target_value, n_evals, x.shape[0], opts)


class _Found(NamedTuple):
    lam: float
    """The matching λ, or the closest one tried."""
    achieved: float
    matched: bool
    exhausted: bool
    """The evaluation budget ran out (else: the bracket closed without a match)."""
    bracketed: bool
    """Some λ gave a density above the target."""
    slope: float
    """−d log(density) / d log λ near `lam` (1 when unknown): how the next search should step from it."""


def _coarse_guess(x: Tensor, dictionary: Dictionary, target: str | float, reference: Tensor | None, tol: float,
                  lam_max: float, max_evals: int, density: Callable[[float, slice], float]) -> tuple[float, float] | None:
    """(λ, slope) from the search on every COARSE_STRIDE-th row against those rows' own target; None when the
    subset is too small or names no target (e.g. no dense latent among its rows)."""
    rows = slice(None, None, COARSE_STRIDE)
    if x.shape[0] < COARSE_STRIDE * COARSE_MIN_ROWS:
        return None
    try:
        _, value = _target(target, x[rows], dictionary, None if reference is None else reference[rows])
    except SaeAmortError:
        return None
    mean_l0_target = target == "l0" or not isinstance(target, str)
    guess = _correlation_guess(x[rows], dictionary, value, lam_max) if mean_l0_target else None
    found = _search(lambda lam: density(lam, rows), value, tol * COARSE_TOL_FRACTION, lam_max, max_evals, guess)
    return found.lam, found.slope


def _correlation_guess(x: Tensor, dictionary: Dictionary, value: float, lam_max: float) -> tuple[float, float] | None:
    """(λ₀, slope) for a mean-L0 target `value` from the correlations x'Aᵀ of the rows alone: λ₀ is the median over
    rows of their k-th largest correlation (k = the target), the λ at which one proximal step from zero keeps about
    k atoms a row; the optimum there is usually sparser (explaining away), so the search starts on the side whose
    solves are cheap. The slope is that count's log–log slope between the k-th and 1.5k-th correlations. None when
    no correlation is positive. (Pythia-shaped TopK SAE, d_sae 16 384, k 64: the unamortized λ's calibration 7.3 →
    4.7 s — from λ_max / 3 its first coarse solve ran at L0 151, and dense solves are the slow ones.)"""
    c = dictionary.target(x) @ dictionary.atoms.T
    k = min(max(1, round(value)), c.shape[1])
    k2 = min(max(k + 1, round(1.5 * k)), c.shape[1])
    top = c.topk(k2, dim=1).values
    lam, lam2 = float(top[:, k - 1].median()), float(top[:, k2 - 1].median())
    if not lam > 0:
        return None
    slope = math.log(k2 / k) / math.log(lam / lam2) if lam2 > 0 and lam > lam2 and k2 > k else 1.0
    return min(lam, lam_max), min(20.0, max(0.5, slope))


def _search(density: Callable[[float], float], target_value: float, tol: float, lam_max: float, max_evals: int,
            guess: tuple[float, float] | None) -> _Found:
    """Bracket the target (density falls as λ grows; λ_max gives 0) and close in by log–log interpolation.
    Without a guess the bracket grows downwards from λ_max by factors of BRACKET_FACTOR; with (λ₀, slope) it starts
    at λ₀ and takes log–log secant steps until the target is bracketed, so a good guess costs one or two
    evaluations."""
    close = lambda v: abs(v - target_value) <= tol * target_value  # noqa: E731
    hi, d_hi, lo, d_lo = lam_max, 0.0, None, None
    hi_tried = False
    best, tried = (math.inf, lam_max, 0.0), []
    lam, slope = (lam_max / BRACKET_FACTOR, 1.0) if guess is None else (min(guess[0], lam_max), guess[1])
    for _ in range(max_evals):
        d = density(lam)
        tried.append((lam, d))
        best = min(best, (abs(d - target_value), lam, d))
        slope = _slope(tried, slope)
        if close(d):
            return _Found(lam, d, True, False, True, slope)
        if d > target_value:
            lo, d_lo = lam, d
        else:
            hi, d_hi, hi_tried = lam, d, True
        if lo is not None and (hi_tried or guess is None):
            if hi / lo < 1 + 1e-6:
                return _Found(best[1], best[2], False, False, True, slope)
            lam = _next_lambda(lo, d_lo, hi, d_hi, target_value)
        elif guess is None:
            lam /= BRACKET_FACTOR
        else:  # one side known: a log–log secant step from the last point, at most ×10, never past λ_max
            step = math.exp((math.log(max(d, 1e-12)) - math.log(target_value)) / slope)
            lam = min(lam_max, lam * min(10.0, max(0.1, step)))
        if lam < lam_max * LAM_FLOOR or lam >= lam_max:
            break
    return _Found(best[1], best[2], False, True, lo is not None, slope)


def _slope(tried: list[tuple[float, float]], default: float) -> float:
    """−Δlog density / Δlog λ between the two latest points with positive density (default when none)."""
    pts = [(lam, d) for lam, d in tried if d > 0]
    if len(pts) < 2 or pts[-1][0] == pts[-2][0]:
        return default
    (l1, d1), (l2, d2) = pts[-2], pts[-1]
    s = -(math.log(d2) - math.log(d1)) / (math.log(l2) - math.log(l1))
    return s if s > 0.05 else default


def _rows_of(opts: ModeOptions, rows: slice) -> ModeOptions:
    return replace(opts, init=opts.init[rows]) if isinstance(opts.init, Tensor) else opts


def _closest(
    msg: str, strict: bool, best: tuple[float, float, float], target: str | float, target_value: float,
    n_evals: int, n_rows: int, opts: ModeOptions,
) -> tuple[Calibration, ModeOptions]:
    """The unmatched outcome: raise (strict), or warn and use the λ that came closest."""
    if strict:
        raise SaeAmortError(f"{msg}; pass strict=False to use the closest λ anyway")
    warnings.warn(f"{msg}; using the closest λ", stacklevel=4)
    return _done(best[1], target, target_value, best[2], n_evals, n_rows, opts)


def _done(
    lam: float, target: str | float, target_value: float, achieved: float, n_evals: int, n_rows: int,
    opts: ModeOptions,
) -> tuple[Calibration, ModeOptions]:
    cal = Calibration(lam=lam, target=target, target_value=target_value, achieved=achieved, n_evals=n_evals,
                      n_rows=n_rows)
    return cal, replace(opts, lam=lam)


def _next_lambda(lo: float, d_lo: float, hi: float, d_hi: float, target: float) -> float:
    """Log–log interpolation between the bracket ends, kept inside its middle 80 % (plain bisection if degenerate)."""
    a, b = math.log(lo), math.log(hi)
    if d_hi > 0 and d_lo > d_hi:
        frac = (math.log(d_lo) - math.log(target)) / (math.log(d_lo) - math.log(d_hi))
        frac = min(0.9, max(0.1, frac))
    else:
        frac = 0.5
    return math.exp(a + frac * (b - a))


def _target(target: str | float, x: Tensor, dictionary: Dictionary, reference: Tensor | None):
    """(density function of codes, numeric target value)."""
    if isinstance(target, bool):
        raise SaeAmortError(f"calibration target must be 'l0', 'dense@τ' or a mean L0, got {target!r}")
    if isinstance(target, (int, float)):
        if not (0 < target <= dictionary.d_sae):
            raise SaeAmortError(f"a mean-L0 target must be in (0, d_sae={dictionary.d_sae}], got {target}")
        return mean_l0, float(target)
    if target == "l0":
        return mean_l0, mean_l0(_amortized_codes(x, dictionary, target, reference))
    if isinstance(target, str) and target.startswith("dense@"):
        try:
            tau = float(target.split("@", 1)[1])
        except ValueError:
            tau = float("nan")
        if not 0 < tau <= 1:
            raise SaeAmortError(
                f"dense target needs a firing-frequency threshold in (0, 1], e.g. 'dense@0.1', got {target!r}"
            )
        value = dense_rate(_amortized_codes(x, dictionary, target, reference), tau)
        if value <= 0:
            raise SaeAmortError(
                f"the amortized codes have no latent firing on ≥ {tau:g} of these rows, so {target!r} is no target; "
                "use target='l0'"
            )
        return (lambda codes: dense_rate(codes, tau)), value
    raise SaeAmortError(f"calibration target must be 'l0', 'dense@τ' or a mean L0, got {target!r}")


def _amortized_codes(x: Tensor, dictionary: Dictionary, target: str, reference: Tensor | None) -> Tensor:
    if reference is not None:
        codes = reference
    elif dictionary.sae is None:
        raise SaeAmortError(
            f"target {target!r} needs the SAE's amortized codes; pass the SAE, or a numeric mean-L0 target"
        )
    else:
        codes = run_mode("amortized", x, dictionary, ModeOptions()).codes
    if mean_l0(codes) <= 0:
        raise SaeAmortError("the amortized codes are all zero on these rows; nothing to match")
    return codes


def mean_l0(codes: Tensor) -> float:
    """Mean number of non-zero latents per row."""
    return float((codes != 0).sum(dim=-1).float().mean())


def dense_rate(codes: Tensor, tau: float) -> float:
    """Fraction of latents that fire (z > 0) on at least a fraction τ of the rows."""
    return float(((codes > 0).float().mean(dim=0) >= tau).float().mean())


def _lambda_modes() -> str:
    from saelens_amort.inference.registry import _MODES

    return ", ".join(name for name, spec in _MODES.items() if spec.needs_lambda)
