"""Where the embedded toy world lives inside the package, and which hook its SAEs read."""

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
"""Shipped weights: model, tokenizer, SAEs, build_info.json."""
SAES_DIR = WEIGHTS_DIR / "saes"
TOY_LAYER = 2
"""The middle block of the 4-layer toy model."""
TOY_HOOK = f"blocks.{TOY_LAYER}.hook_resid_post"
