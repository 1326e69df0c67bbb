"""The inference-mode registry and `infer`, the one entry point every caller uses (DESIGN §3).

`infer` does everything modes should not repeat: resolve the dictionary, validate x (shape, NaN/inf rows), validate
options, calibrate λ when a mode needs one and none was given, choose k for k-sparse modes, time the call, and record
what it did in `info`. Modes register with `register_mode(name, fn)`; re-registering the same function is a no-op,
so notebooks can re-import freely.
"""

from __future__ import annotations

import logging
import numbers
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Collection

import torch
from jaxtyping import Float
from torch import Tensor

from saelens_amort.errors import SaeAmortError
from saelens_amort.inference.flops import add_info
from saelens_amort.inference.refit import refit_result
from saelens_amort.inference.result import InferenceResult, ModeFn, ModeOptions
from saelens_amort.saes.dictionary import Dictionary

if TYPE_CHECKING:
    from sae_lens import SAE

logger = logging.getLogger(__name__)

CALIBRATION_ROWS = 2048
"""λ (and k) are calibrated on the first this-many rows of x when not given."""

NAN_POLICIES = ("raise", "drop")

LASSO_OBJECTIVE = "l1 lasso"
"""`info["objective"]` of the modes that solve at a λ (the ksparse modes say "l2 at fixed per-row L0"; refit
"l2 (NNLS) on the mode's support")."""


@dataclass(frozen=True)
class ModeSpec:
    name: str
    fn: ModeFn
    needs_lambda: bool = True
    """The mode solves at a λ; `infer` calibrates one when none is given."""
    needs_k: bool = False
    """The mode needs k active latents per row; `infer` matches the amortized mean L0 when none is given."""
    needs_sae: bool = False
    """The mode needs the SAE itself (its encoder), not just the dictionary."""
    encoder_start: bool = False
    """With init=None the mode starts from the encoder's code when the SAE is there (semi)."""
    options: frozenset[str] | None = None
    """Extra keyword options the mode understands (None = accept any)."""


_MODES: dict[str, ModeSpec] = {}


def register_mode(
    name: str,
    fn: ModeFn,
    *,
    needs_lambda: bool = True,
    needs_k: bool = False,
    needs_sae: bool = False,
    encoder_start: bool = False,
    overwrite_ok: bool = True,
    options: Collection[str] | None = None,
) -> None:
    """Register an inference mode `fn(x, dictionary, options) -> InferenceResult` under `name`.

    Re-registering the same function (or a re-imported one with the same module and name) is always fine; another
    function under a taken name replaces it when `overwrite_ok`, else raises. `options` lists the extra keyword
    options the mode accepts, so typos fail loudly (None accepts anything). `encoder_start`: with init=None the mode
    starts from the encoder's code, which `infer` then computes once on all rows and passes as the init tensor.
    """
    if not isinstance(name, str) or not name.strip():
        raise SaeAmortError(f"a mode name must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise SaeAmortError(f"mode {name!r}: fn must be callable, got {type(fn).__name__}")
    spec = ModeSpec(
        name=name,
        fn=fn,
        needs_lambda=needs_lambda,
        needs_k=needs_k,
        needs_sae=needs_sae,
        encoder_start=encoder_start,
        options=None if options is None else frozenset(options),
    )
    old = _MODES.get(name)
    if old is not None and not _same_function(old.fn, fn) and not overwrite_ok:
        raise SaeAmortError(f"inference mode {name!r} is already registered; pass overwrite_ok=True to replace it")
    if old is not None and not _same_function(old.fn, fn):
        logger.info("replacing inference mode %r", name)
    _MODES[name] = spec


def _same_function(a: Any, b: Any) -> bool:
    if a is b:
        return True
    key = lambda f: (getattr(f, "__module__", None), getattr(f, "__qualname__", None))  # noqa: E731
    return key(a) == key(b) and key(a) != (None, None)


def list_modes() -> list[str]:
    """Registered mode names, in registration order."""
    return list(_MODES)


def get_mode(name: str) -> ModeSpec:
    """The registration record of mode `name` (SaeAmortError listing the registered modes if unknown)."""
    try:
        return _MODES[name]
    except (KeyError, TypeError):
        raise SaeAmortError(f"unknown inference mode {name!r}; registered modes: {', '.join(_MODES)}") from None


def resolve_dictionary(sae_or_dictionary: "SAE | Dictionary") -> Dictionary:
    """The dictionary view of an SAE (or a Dictionary as is): `Dictionary.of`, cached per SAE object."""
    return Dictionary.of(sae_or_dictionary)


@torch.no_grad()
def infer(
    x: Float[Tensor, "... d_in"],
    sae_or_dictionary: "SAE | Dictionary",
    mode: str = "unamortized",
    *,
    lam: float | None = None,
    steps: int | None = None,
    tol: float = 1e-4,
    k: int | Tensor | None = None,
    init: str | Tensor | None = None,
    nan_policy: str = "raise",
    refit: bool = False,
    **options: Any,
) -> InferenceResult:
    """Codes for activations `x` under inference `mode`, in the SAE's own code space.

    x: raw activations [..., d_in] (leading dimensions are kept unless rows are dropped).
    lam: λ of F(u; x); None calibrates it on the first ≤ 2048 rows so the mode's mean L0 matches the amortized one
        there within 5 % (recorded in `info["calibration"]`; SaeAmortError when no λ does: pass one, or take
        `calibrate_lambda(..., strict=False)`'s closest). Modes that need no λ report the objective at `lam` (NaN if
        None).
    steps / tol: iteration budget and per-row relative stopping tolerance (mode defaults when None).
    k: active latents per row for k-sparse modes; None matches the amortized mean L0 over x (recorded in `info["k"]`);
        the ksparse modes also take one k per row (a tensor shaped like x's leading dimensions) and default to the
        encoder's own per-row L0.
    init: 'encoder', 'alista', 'zero', or SAE codes shaped like the output.
    nan_policy: 'raise' on rows with NaN/inf, or 'drop' them (count in `info["dropped_rows"]`, kept row indices in
        `info["kept_rows"]`; the result is then flat [N_kept, d_sae]).
    refit: replace the mode's codes by non-negative least squares on their support (`inference/refit.py`).
    options: mode-specific options (e.g. solver='ista', return_trace=True).
    """
    spec = get_mode(mode)
    dictionary = resolve_dictionary(sae_or_dictionary)
    if spec.options is not None:
        unknown = sorted(set(options) - spec.options)
        if unknown:
            accepted = ", ".join(sorted(spec.options)) or "none"
            raise SaeAmortError(f"mode {mode!r} does not take option(s) {', '.join(unknown)}; it accepts: {accepted}")
    if spec.needs_sae and dictionary.sae is None:
        raise SaeAmortError(f"mode {mode!r} needs the SAE itself (its encoder); pass the SAE, not a bare Dictionary")
    if nan_policy not in NAN_POLICIES:
        raise SaeAmortError(f"nan_policy must be one of {', '.join(NAN_POLICIES)}, got {nan_policy!r}")
    if isinstance(k, numbers.Integral) and not isinstance(k, bool) and k > dictionary.d_sae:
        raise SaeAmortError(f"k={k} exceeds the dictionary size d_sae={dictionary.d_sae}")

    x2, lead, info = _validate_x(x, dictionary, nan_policy)
    if isinstance(k, Tensor):
        options["k_rows"], k = _per_row_k(k, x, info, mode, spec), None
    if isinstance(init, Tensor):
        init = _validate_init(init, x, lead, dictionary, info)
    opts = ModeOptions(lam=lam, steps=steps, tol=tol, k=k, init=init, extra=options)

    # The encoder's code, computed once on all rows (the batch the amortized mode sees, which matters for
    # batch-dependent encoders such as training-form BatchTopK): the warm start, k and the calibration target.
    from_encoder = dictionary.sae is not None and (
        (isinstance(opts.init, str) and opts.init == "encoder") or (opts.init is None and spec.encoder_start)
    )
    encoded = start = None
    if from_encoder or (dictionary.sae is not None and (
            (spec.needs_k and opts.k is None) or (spec.needs_lambda and opts.lam is None))):
        start = run_mode("amortized", x2, dictionary, ModeOptions())
        encoded = start.codes
    if from_encoder:
        opts = replace(opts, init=encoded)
        info["init"] = "encoder"
    if spec.needs_k and opts.k is None:
        opts = _with_matched_k(opts, encoded, dictionary, mode, info)
    if spec.needs_lambda and opts.lam is None:
        from saelens_amort.inference.calibrate import calibrate_options

        reference = None if encoded is None else encoded[:CALIBRATION_ROWS]
        began = time.perf_counter()
        cal, opts = calibrate_options(x2[:CALIBRATION_ROWS], dictionary, mode, opts, reference=reference)
        info["calibration"] = {**cal._asdict(), "seconds": time.perf_counter() - began}

    result = run_mode(spec, x2, dictionary, opts)
    if from_encoder:  # the encoder's start is the mode's work: its time and FLOPs count (calibration's do not)
        result = result._replace(seconds=result.seconds + start.seconds, info=add_info(result.info, start.info))
    if spec.needs_lambda:
        result = result._replace(info={"objective": LASSO_OBJECTIVE, **result.info})
    if refit:
        result = refit_result(result, x2, dictionary)
    result = result._replace(info={**result.info, **info})
    if lead is not None:
        result = result._replace(
            codes=result.codes.reshape(*lead, dictionary.d_sae),
            n_iter=result.n_iter.reshape(lead),
            objective=result.objective.reshape(lead),
            converged=result.converged.reshape(lead),
        )
    return result


def run_mode(spec: ModeSpec | str, x: Tensor, dictionary: Dictionary, options: ModeOptions) -> InferenceResult:
    """Call a mode on already validated [N, d_in] rows, timing it and filling `seconds`, `mode` and `lam`."""
    if isinstance(spec, str):
        spec = get_mode(spec)
    start = time.perf_counter()
    with torch.no_grad():
        result = spec.fn(x, dictionary, options)
    if not isinstance(result, InferenceResult):
        raise TypeError(f"mode {spec.name!r} returned {type(result).__name__}, not an InferenceResult")
    if _needs_sync(result.codes):
        torch.cuda.synchronize(result.codes.device)
    seconds = time.perf_counter() - start
    lam = result.lam if result.lam is not None else options.lam
    return result._replace(seconds=seconds, mode=spec.name, lam=lam)


def _needs_sync(t: Tensor) -> bool:
    return t.device.type == "cuda"


def _validate_x(
    x: Tensor, dictionary: Dictionary, nan_policy: str
) -> tuple[Tensor, tuple[int, ...] | None, dict[str, Any]]:
    """x as [N, d_in] on the dictionary's device; the leading shape to restore (None if rows were dropped); info."""
    if not isinstance(x, Tensor):
        raise SaeAmortError(f"activations must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 0 or x.shape[-1] != dictionary.d_in:
        raise SaeAmortError(
            f"activations have shape {tuple(x.shape)}; the dictionary expects [..., {dictionary.d_in}]"
        )
    lead: tuple[int, ...] | None = tuple(x.shape[:-1])
    x2 = x.reshape(-1, dictionary.d_in).to(dictionary.atoms.device)
    info: dict[str, Any] = {}
    bad = ~torch.isfinite(x2).all(dim=-1)
    n_bad = int(bad.sum())
    if n_bad:
        if nan_policy == "raise":
            raise SaeAmortError(
                f"{n_bad} of {x2.shape[0]} activation rows contain NaN or inf; clean them or pass nan_policy='drop'"
            )
        keep = (~bad).nonzero().squeeze(1)
        x2 = x2[keep]
        info["dropped_rows"] = n_bad
        info["kept_rows"] = keep.cpu()
        lead = None
    return x2, lead, info


def _validate_init(init: Tensor, x: Tensor, lead: tuple[int, ...] | None, dictionary: Dictionary, info: dict) -> Tensor:
    expected = (*x.shape[:-1], dictionary.d_sae)
    if tuple(init.shape) != expected:
        raise SaeAmortError(f"init codes have shape {tuple(init.shape)}; expected {expected} (SAE codes per row)")
    init = init.reshape(-1, dictionary.d_sae).to(dictionary.atoms.device)
    if "kept_rows" in info:
        init = init[info["kept_rows"].to(init.device)]
    if not torch.isfinite(init).all():
        raise SaeAmortError("init codes contain NaN or inf")
    return init


def _per_row_k(k: Tensor, x: Tensor, info: dict, mode: str, spec: ModeSpec) -> Tensor:
    """A per-row k tensor (shaped like x's leading dimensions) as one value per kept row."""
    if spec.options is None or "k_rows" not in spec.options:
        raise SaeAmortError(f"mode {mode!r} takes k as one integer; per-row k is for the ksparse modes")
    if tuple(k.shape) != tuple(x.shape[:-1]):
        raise SaeAmortError(f"per-row k has shape {tuple(k.shape)}; expected x's leading shape {tuple(x.shape[:-1])}")
    k = k.reshape(-1)
    return k[info["kept_rows"].to(k.device)] if "kept_rows" in info else k


def _with_matched_k(
    opts: ModeOptions, codes: Tensor | None, dictionary: Dictionary, mode: str, info: dict
) -> ModeOptions:
    """k = the mean L0 (rounded, ≥ 1) of the amortized `codes` of every row (None: no SAE to give them)."""
    if codes is None:
        raise SaeAmortError(f"mode {mode!r} needs k; pass k=... (it defaults to the amortized L0 only with an SAE)")
    mean_l0 = float((codes > 0).sum(dim=-1).float().mean()) if codes.shape[0] else 1.0
    k = min(dictionary.d_sae, max(1, round(mean_l0)))
    info["k"] = {"k": k, "source": "amortized mean L0", "amortized_l0": mean_l0}
    return replace(opts, k=k)
