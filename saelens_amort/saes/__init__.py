"""SAE loading: SAE-Lens releases and directories, dictionary_learning conversion, the toy SAEs, model fit checks."""

from saelens_amort.saes.dictionary import Dictionary
from saelens_amort.saes.dictionary_learning import is_dictionary_learning_dir, load_dictionary_learning_sae
from saelens_amort.saes.loading import TOY_SAE_FAMILIES, check_sae_fits, load_sae
from saelens_amort.training import loca as _loca  # noqa: F401  registers SAE-Lens architecture "loca" (idempotent)

__all__ = [
    "Dictionary",
    "TOY_SAE_FAMILIES",
    "check_sae_fits",
    "is_dictionary_learning_dir",
    "load_dictionary_learning_sae",
    "load_sae",
]
