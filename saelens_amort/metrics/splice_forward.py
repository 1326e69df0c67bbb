"""The model's next-token logits with one hook's activation edited, computed from where the edit happens.

When the hook is a block's residual output (`blocks.L.hook_resid_post`), everything up to it is the clean run's, so
an edited run starts at block L + 1 from the edited residual (TransformerLens' `start_at_layer`) instead of running
the whole model again with a hook: spliced CE / KL runs every setting this way from one clean run per chunk (for a
pythia-160m-shaped model spliced at block 8 of 12, an edited run costs the last 3 blocks and the unembedding). Any
other hook, a shortformer model, left padding (its attention mask is computed from the tokens) or a model split over
devices runs the whole model with the hook, as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

_RESID_POST = re.compile(r"blocks\.(\d+)\.hook_resid_post")

Edit = Callable[[Tensor, Any], Tensor]
"""A TransformerLens hook function: the activation (and the hook point) → the activation to use."""


def resume_layer(model: "HookedTransformer", hook_name: str) -> int | None:
    """The block an edited run of `hook_name` can start at (module docstring), or None when it must run it all."""
    match = _RESID_POST.fullmatch(hook_name)
    tokenizer = getattr(model, "tokenizer", None)
    if (match is None or model.cfg.positional_embedding_type == "shortformer" or model.cfg.n_devices != 1
            or getattr(tokenizer, "padding_side", "right") == "left"):
        return None
    return int(match.group(1)) + 1


def clean_logits(model: "HookedTransformer", tokens: Tensor, hook_name: str) -> tuple[Tensor, Tensor | None]:
    """The clean run's logits, and the hook's activation when edited runs can start after it (else None)."""
    if resume_layer(model, hook_name) is None:
        return model(tokens), None
    seen: dict[str, Tensor] = {}

    def keep(act: Tensor, hook: Any) -> Tensor:
        seen["act"] = act.clone()
        return act

    with model.hooks(fwd_hooks=[(hook_name, keep)]):
        logits = model(tokens)
    return logits, seen["act"]


def edited_logits(model: "HookedTransformer", tokens: Tensor, hook_name: str, edit: Edit,
                  clean_act: Tensor | None) -> Tensor:
    """The logits with `edit` applied at `hook_name`: from the block after it, given the clean run's activation there
    (`clean_logits`), else the whole model with the edit as a hook."""
    if clean_act is not None:
        return model(edit(clean_act, None), start_at_layer=resume_layer(model, hook_name))
    with model.hooks(fwd_hooks=[(hook_name, edit)]):
        return model(tokens)
