"""saelens_amort: the price of amortized inference in sparse autoencoders.

Public API (stable names): load_model, load_sae, check_sae_fits, collect_activations, CollectConfig,
ActivationStore, resolve_source, Dictionary, infer, register_mode, list_modes, calibrate_lambda, InferenceResult,
SaeAmortError.

Importing the package is cheap (the `saeamort` command starts from it): the names that need torch, SAE-Lens or
TransformerLens load on first use. `saelens_amort.saes` (and so `load_sae`) registers the SAE-Lens architecture
"loca" (idempotent).
"""

from saelens_amort.errors import SaeAmortError

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
    # The model, SAE and activation modules pull in torch, transformer_lens and sae_lens; defer them until asked for.
    if name == "load_model":
        from saelens_amort import models

        return models.load_model
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
