"""Runner for `saeamort interpret`: top-activating contexts per latent and the feature-density view of one SAE."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from saelens_amort.devices import on_device
from saelens_amort.inference import mode_lambda
from saelens_amort.provenance import provenance
from saelens_amort.run_folder import check_run_folder
from saelens_amort.runners.tpp import prepare
from saelens_amort.runners.tpp_config import TppConfig
from saelens_amort.views.contexts import LatentViews, latent_views, write_views

CALIB_TOKENS = 1024
"""λ of a λ-mode is calibrated (to the encoder's L0) on the first this many scanned tokens."""


def run_interpret(cfg: TppConfig, out: Path, *, latents: Sequence[int] | None = None, n_latents: int = 16,
                  top_n: int = 10, window: int = 10, overwrite: bool = False) -> LatentViews:
    """Contexts of `latents` (default: the `n_latents` most frequent non-dense ones) in the codes of `cfg.modes[0]`,
    written to `out` (contexts.json, contexts.md, report.html); another run's `out` is refused unless `overwrite`."""
    cfg = on_device(cfg)
    mode = cfg.modes[0]
    chosen = list(latents) if latents else None
    run = {**asdict(cfg), "latents": chosen, "n_latents": n_latents, "top_n": top_n, "window": window}
    check_run_folder(out, "interpret", run, overwrite=overwrite)
    lm, sae, hook, store = prepare(cfg)
    lam = mode_lambda(store.load(CALIB_TOKENS).acts, sae, mode)
    views = latent_views(store, sae, lm.tokenizer, latents=chosen, n_latents=n_latents, top_n=top_n, window=window,
                         mode=mode, lam=lam)
    write_views(views, Path(out), f"Latents of {cfg.resolved_sae()} @ {hook} ({mode})",
                {"sae": cfg.resolved_sae(), "hook": hook, "mode": mode, "lam": lam, **provenance()}, run)
    return views
