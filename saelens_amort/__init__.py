"""saelens_amort: the price of amortized inference in sparse autoencoders.

Public API (stable names): load_model, load_sae, check_sae_fits, collect_activations, CollectConfig,
ActivationStore, resolve_source, Dictionary, infer, register_mode, list_modes, calibrate_lambda, InferenceResult,
SaeAmortError.
"""

from saelens_amort.errors import SaeAmortError
from saelens_amort.models import load_model
from saelens_amort.training import loca as _loca  # noqa: F401  registers SAE-Lens architecture "loca" (idempotent)

__version__ = "0.1.0"

__all__ = [
    "ActivationStore",
    "CollectConfig",
    "Dictionary",
    "InferenceResult",
    "SaeAmortError",
    "calibrate_lambda",
    "check_sae_fits",
    "collect_activations",
    "infer",
    "list_modes",
    "load_model",
    "load_sae",
    "register_mode",
    "resolve_source",
]


def __getattr__(name: str):
    # Loading the SAE and activation modules pulls in sae_lens; defer it until asked for.
    if name in ("load_sae", "check_sae_fits", "Dictionary"):
        from saelens_amort import saes

        return getattr(saes, name)
    if name in ("ActivationStore", "CollectConfig", "collect_activations", "resolve_source"):
        from saelens_amort import activations

        return getattr(activations, name)
    if name in ("infer", "register_mode", "list_modes", "calibrate_lambda", "InferenceResult"):
        from saelens_amort import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'saelens_amort' has no attribute {name!r}")
