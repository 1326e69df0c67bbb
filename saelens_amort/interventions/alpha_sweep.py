"""Feature α-sweep (DESIGN §5, GPT-2 res-jb style): scale one latent by α where it is live and measure the effect.

Per feature (layer, latent j) and α: the latent's codes (from any inference mode; amortized by default) are multiplied
by α at positions where it is live, i.e. above the `percentile`-th percentile of its positive activations on the
evaluation tokens (the SAE error term is kept, so α = 1 changes nothing), and against the clean run we measure ΔCE
(mean next-token loss, edited − clean), the mean KL(clean ‖ edited) over next-token distributions, and the top-k logit
deltas (mean over live positions, decoded). Right-padded rows give their real `lengths`: padding never sets the
threshold, is never live, and no prediction of a padding token is scored (padding would dilute ΔCE and KL, and can
flip ΔCE's sign).
Features come from the files `saelens_amort.feature_lists` reads.
On CUDA out-of-memory the batch is halved and retried (logged), down to one sequence.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from saelens_amort.errors import SaeAmortError
from saelens_amort.interventions.hooks import LatentEdit, latent_edit
from saelens_amort.metrics.next_token import kl_per_position, next_token_scores
from saelens_amort.runners.alpha_sweep_config import DEFAULT_ALPHAS

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

logger = logging.getLogger(__name__)

TOP_LOGITS = 5


def _batched(fn, tokens: Tensor, batch: int):
    """fn over row batches of tokens, halving the batch on CUDA out-of-memory (down to 1)."""
    outs, start = [], 0
    while start < tokens.shape[0]:
        try:
            outs.append(fn(tokens[start:start + batch]))
            start += batch
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            batch //= 2
            logger.warning("CUDA out of memory: retrying with batch %d", batch)
            torch.cuda.empty_cache()
    return torch.cat(outs)


@torch.no_grad()
def sweep_feature(
    model: "HookedTransformer", sae: "SAE", hook_name: str, tokens: Tensor, latent: int,
    alphas: Sequence[float] = DEFAULT_ALPHAS, *, percentile: float = 90.0, batch: int = 16,
    clean_logits: Tensor | None = None, top_k: int = TOP_LOGITS, mode: str = "amortized", lam: float | None = None,
    lengths: Tensor | None = None,
) -> list[dict]:
    """One row per α for `latent` (module docstring); an empty list (with a logged reason) if it never fires.

    lengths: real tokens per row (BOS included) of right-padded `tokens`; None = no padding.
    """
    if not 0 <= latent < sae.cfg.d_sae:
        raise SaeAmortError(f"latent index {latent} is out of range for an SAE with d_sae={sae.cfg.d_sae}")
    real = real_positions(tokens, lengths)
    acts = _batched(lambda t: model.run_with_cache(t, names_filter=hook_name)[1][hook_name], tokens, batch)
    from saelens_amort.inference import infer

    z = torch.zeros(real.shape)
    z[real] = infer(acts[real].reshape(int(real.sum()), -1), sae, mode, lam=lam).codes[:, latent].float().cpu()
    z[:, 0] = 0  # BOS is never edited
    fired = z[z > 0]
    if fired.numel() == 0:
        return []
    threshold = float(torch.quantile(fired.float(), percentile / 100)) if percentile > 0 else 0.0
    live = z > threshold
    scored = real[:, 1:]
    clean = clean_logits if clean_logits is not None else _batched(model, tokens, batch)
    clean_lp, ce_clean = next_token_scores(clean, tokens)
    rows = []
    for alpha in alphas:
        edit = LatentEdit(scale={latent: float(alpha)}, live_threshold={latent: threshold})
        with latent_edit(model, sae, edit, hook_name=hook_name, mode=mode, lam=lam):
            logits = _batched(model, tokens, batch)
        lp, ce = next_token_scores(logits, tokens)
        kl = kl_per_position(clean_lp, lp)[scored].mean()
        delta = (logits - clean)[live].float().mean(0) if bool(live.any()) else torch.zeros(clean.shape[-1])
        top = delta.topk(min(top_k, delta.numel()))
        rows.append({"alpha": float(alpha), "delta_ce": float(ce[scored].mean() - ce_clean[scored].mean()),
                     "kl": float(kl),
                     "live_positions": int(live.sum()), "threshold": threshold,
                     "top_logit_tokens": " | ".join(model.to_string(int(t)) for t in top.indices),
                     "top_logit_deltas": " | ".join(f"{v:.3g}" for v in top.values.tolist())})
    return rows


def real_positions(tokens: Tensor, lengths: Tensor | None) -> Tensor:
    """[B, T] mask of the real (non-padding) positions of right-padded rows with `lengths` real tokens each."""
    if lengths is None:
        return torch.ones(tokens.shape, dtype=torch.bool)
    lengths = torch.as_tensor(lengths).cpu()
    if lengths.shape != tokens.shape[:1] or bool((lengths < 2).any()) or bool((lengths > tokens.shape[1]).any()):
        raise SaeAmortError(f"lengths must give 2 … {tokens.shape[1]} real tokens for each of the {tokens.shape[0]} "
                            f"rows, got {lengths.tolist()}")
    return torch.arange(tokens.shape[1])[None, :] < lengths[:, None]


def top_snippets(model: "HookedTransformer", sae: "SAE", hook_name: str, tokens: Tensor, latent: int, n: int = 3,
                 window: int = 8, lengths: Tensor | None = None) -> list[str]:
    """The `n` contexts where the latent is most active (padding excluded): `window` tokens before, the token in
    [brackets]."""
    with torch.no_grad():
        acts = model.run_with_cache(tokens, names_filter=hook_name)[1][hook_name]
        z = sae.encode(acts)[..., latent].cpu()
    z[~real_positions(tokens, lengths)] = 0
    z[:, 0] = 0
    flat = z.flatten().topk(min(n, z.numel()))
    out = []
    for v, idx in zip(flat.values.tolist(), flat.indices.tolist()):
        if v <= 0:
            break
        r, p = divmod(idx, z.shape[1])
        before = model.to_string(tokens[r, max(1, p - window):p])
        out.append(f"{before} [{model.to_string(tokens[r, p:p + 1])}] ({v:.3g})")
    return out
