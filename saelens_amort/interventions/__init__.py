"""Interventions through SAE latents: hooks held by context managers (edits keep the SAE error term), patching."""

from saelens_amort.interventions.hooks import LatentEdit, active_hooks, latent_edit, parse_edit
from saelens_amort.interventions.patching import Patched, patch_generate

__all__ = ["LatentEdit", "Patched", "active_hooks", "latent_edit", "parse_edit", "patch_generate"]
