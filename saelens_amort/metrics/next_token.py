"""Next-token scores from a model's logits: log-probs, the CE of each next token, and KL between two runs — written
to hold as few [B, T, V] tensors as possible (at pythia's vocabulary one is ~200 MB per 1 000 positions)."""

from __future__ import annotations

import torch
from torch import Tensor


def next_token_scores(logits: Tensor, tokens: Tensor, *, in_place: bool = False) -> tuple[Tensor, Tensor]:
    """Log-probs at positions 0..T−2 (fp32) and the CE of each next token; `in_place`: written over fp32 `logits`
    (which the caller gives up), a sequence at a time — no second [B, T, V] tensor."""
    if not in_place:
        log_probs = logits[:, :-1].float().log_softmax(dim=-1)
    else:
        log_probs = logits[:, :-1].float()
        for row in log_probs:
            row -= row.logsumexp(dim=-1, keepdim=True)
    return log_probs, -log_probs.gather(-1, tokens[:, 1:, None]).squeeze(-1)


def kl_per_position(clean: Tensor, other: Tensor) -> Tensor:
    """KL(clean ‖ other) per position from log-probs [B, T, V], a sequence at a time (temporaries of one [T, V])."""
    return torch.stack([torch.nn.functional.kl_div(o, c, log_target=True, reduction="none").sum(dim=-1)
                        for c, o in zip(clean, other)])
