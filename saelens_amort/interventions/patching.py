"""Patching: generate the original and the patched continuation of each prompt side by side (DESIGN §5).

Both continuations start from the same prompt tokens and the same seed; greedy by default (then the only difference
is the edit). Prompts longer than the model's context are truncated from the left with a warning. Also warned about,
since the side-by-side table would show them without a word: a continuation that is empty (or only whitespace) and an
ablated or amplified latent that never fires on the prompt (editing it changes nothing there).

λ of a λ-mode, when not given, is calibrated on the prompts' own positions at the hook (the tokens generation starts
from), leaving out the first position only where it is the tokenizer's BOS.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from saelens_amort.errors import SaeAmortError
from saelens_amort.inference import get_mode, infer, mode_lambda
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
def prompt_activations(model: "HookedTransformer", hook_name: str, tokens: torch.Tensor) -> torch.Tensor:
    """[T', d_in] activations of one prompt's tokens [1, T] at the hook (hook_z heads flattened), without the first
    position only where it is the tokenizer's BOS."""
    acts = model.run_with_cache(tokens, names_filter=hook_name)[1][hook_name][0]
    bos = getattr(model.tokenizer, "bos_token_id", None) if model.tokenizer is not None else None
    first = 1 if bos is not None and int(tokens[0, 0]) == bos else 0
    return acts[first:].reshape(acts.shape[0] - first, -1)


def calibrate_on_prompts(model: "HookedTransformer", sae: "SAE", hook_name: str, prompts: Sequence[str], mode: str,
                         max_new_tokens: int) -> float | None:
    """λ for `mode` (None when it needs none), matched to the encoder's L0 on the prompts' positions (module
    docstring)."""
    if not get_mode(mode).needs_lambda:
        return None
    if not prompts:
        raise SaeAmortError("give at least one prompt")
    acts = [prompt_activations(model, hook_name, prompt_tokens(model, p, max_new_tokens).to(model.cfg.device))
            for p in prompts]
    return mode_lambda(torch.cat(acts), sae, mode)


def _warn_silent_latents(model: "HookedTransformer", sae: "SAE", edit: LatentEdit, prompt: str, tokens: torch.Tensor,
                         hook_name: str, mode: str, lam: float | None, infer_kwargs: dict) -> None:
    edited = sorted({*edit.ablate, *edit.scale})
    if not edited:
        return
    codes = infer(prompt_activations(model, hook_name, tokens), sae, mode, lam=lam, **infer_kwargs).codes
    silent = [j for j in edited if not bool((codes[:, j] > 0).any())]
    if silent:
        warnings.warn(f"latent(s) {', '.join(map(str, silent))} never fire on the prompt {prompt!r} ({mode} codes): "
                      "ablating or amplifying them changes nothing there", UserWarning, stacklevel=3)


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
    edit.check(int(sae.cfg.d_sae))
    hook_name = hook_name or sae.cfg.metadata.hook_name
    out = []
    for prompt in prompts:
        tokens = prompt_tokens(model, prompt, max_new_tokens).to(model.cfg.device)
        _warn_silent_latents(model, sae, edit, prompt, tokens, hook_name, mode, lam, infer_kwargs)

        def generate() -> str:
            torch.manual_seed(seed)
            toks = model.generate(tokens, max_new_tokens=max_new_tokens, do_sample=not greedy, stop_at_eos=False,
                                  use_past_kv_cache=False, verbose=False)
            return model.to_string(toks[0, tokens.shape[1]:])

        original = generate()
        with latent_edit(model, sae, edit, hook_name=hook_name, mode=mode, lam=lam, **infer_kwargs):
            patched = generate()
        for name, text in (("original", original), ("patched", patched)):
            if not text.strip():
                warnings.warn(f"the {name} continuation of {prompt!r} is empty ({text!r}: {max_new_tokens} tokens "
                              "that decode to no text)", UserWarning, stacklevel=2)
        out.append(Patched(prompt, original, patched))
    return out
