"""Inference modes: amortized (the SAE's encoder), semi-amortized, unamortized (FISTA/ISTA), OMP, MP, and the
k-sparse modes at the SAE's own per-row L0 (DESIGN §3, §9).

    infer(x, sae, mode="unamortized", lam=None)  →  InferenceResult(codes, n_iter, objective, converged, lam, …)

Every mode is registered by name (`register_mode`); `list_modes()` shows them. Importing this package registers the
built-in modes.
"""

import importlib
import importlib.util

from saelens_amort.inference.registry import get_mode, infer, list_modes, register_mode, resolve_dictionary
from saelens_amort.inference.result import InferenceResult, ModeFn, ModeOptions, objective

from saelens_amort.inference import amortized, fista, semi  # noqa: E402,F401  (register the built-in modes)

for _name in ("omp", "mp", "ksparse"):  # k-sparse modes, when present
    if importlib.util.find_spec(f"{__name__}.{_name}") is not None:
        importlib.import_module(f"{__name__}.{_name}")

from saelens_amort.inference.calibrate import Calibration, calibrate_lambda, mode_lambda  # noqa: E402

__all__ = [
    "Calibration",
    "InferenceResult",
    "ModeFn",
    "ModeOptions",
    "calibrate_lambda",
    "mode_lambda",
    "get_mode",
    "infer",
    "list_modes",
    "objective",
    "register_mode",
    "resolve_dictionary",
]
