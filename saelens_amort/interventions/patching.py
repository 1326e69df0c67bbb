"""Patching: generate the original and the patched continuation of each prompt side by side (DESIGN §5).

Both continuations start from the same prompt tokens and the same seed; greedy by default (then the only difference
is the edit). Prompts longer than the model's context are truncated from the left with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from saelens_amort.errors import SaeAmortError
from saelens_amort.interventions.hooks import LatentEdit, latent_edit

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer


@dataclass(frozen=True)
class Patched:
    prompt: str
    original: str
    patched: str


def prompt_tokens(model: "HookedTransformer", prompt: str, room: int) -> torch.Tensor:
    """[1, T] tokens of `prompt` with BOS, left-truncated (with a warning) to leave `room` positions of context."""
    tokens = model.to_tokens(prompt, prepend_bos=True)
    limit = model.cfg.n_ctx - room
    if limit < 2:
        raise SaeAmortError(f"--max-new-tokens {room} leaves no room for a prompt in a context of {model.cfg.n_ctx}")
    if tokens.shape[1] > limit:
        warnings.warn(f"prompt of {tokens.shape[1]} tokens truncated to its last {limit - 1} (context "
                      f"{model.cfg.n_ctx}, {room} new tokens)", UserWarning, stacklevel=2)
        tokens = torch.cat([tokens[:, :1], tokens[:, -(limit - 1):]], dim=1)
    return tokens


@torch.no_grad()
def patch_generate(
    model: "HookedTransformer",
    sae: "SAE",
    edit: LatentEdit,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 20,
    greedy: bool = True,
    seed: int = 0,
    hook_name: str | None = None,
    mode: str = "amortized",
    lam: float | None = None,
    **infer_kwargs: Any,
) -> list[Patched]:
    """Original vs patched continuation of every prompt (see the module docstring)."""
    if not prompts:
        raise SaeAmortError("give at least one prompt")
    if max_new_tokens < 1:
        raise SaeAmortError(f"--max-new-tokens must be ≥ 1, got {max_new_tokens}")
    out = []
    for prompt in prompts:
        tokens = prompt_tokens(model, prompt, max_new_tokens).to(model.cfg.device)

        def generate() -> str:
            torch.manual_seed(seed)
            toks = model.generate(tokens, max_new_tokens=max_new_tokens, do_sample=not greedy, stop_at_eos=False,
                                  use_past_kv_cache=False, verbose=False)
            return model.to_string(toks[0, tokens.shape[1]:])

        original = generate()
        with latent_edit(model, sae, edit, hook_name=hook_name, mode=mode, lam=lam, **infer_kwargs):
            patched = generate()
        out.append(Patched(prompt, original, patched))
    return out
