"""`saeamort train`: train any SAE family (or LocA-SAE) with SAE-Lens' trainer on cached activations."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from saelens_amort.cli.app import app
from saelens_amort.cli.options import (
    DEVICE, MAX_SEED, MAX_TOKENS, comma_list, count_option, out_option, source_option, tokens_option,
)


@app.command("train")
def train_command(
    arch: Optional[str] = typer.Option(None, help="standard | topk | batchtopk | matryoshka_batchtopk | jumprelu | "
                                                  "gated | loca (default topk)."),
    config: Optional[Path] = typer.Option(None, help="Recipe YAML from configs/ (options given here override it)."),
    model: Optional[str] = typer.Option(None, help="TransformerLens name, local HF checkpoint dir, or 'toy'."),
    layer: Optional[int] = typer.Option(None, help="Block whose hook_resid_post to train on (toy default 2)."),
    source: Optional[str] = source_option(None, "Text source (default: toy for toy, the Pile otherwise)."),
    tokens: Optional[int] = tokens_option(None, "Training tokens (one pass)."),
    steps: Optional[int] = count_option(None, "Optimiser steps (default tokens // batch size).", high=MAX_TOKENS),
    batch_size: Optional[int] = count_option(None, "Tokens per step."),
    expansion: Optional[int] = count_option(None, "d_sae / d_in."),
    k: Optional[int] = count_option(None, "Active latents per token (TopK families)."),
    budgets: Optional[str] = typer.Option(None, help="LocA group budgets, e.g. 6,5,4,3,3,2,2,1."),
    lr: Optional[float] = typer.Option(None, help="Learning rate."),
    checkpoint_every: Optional[int] = count_option(None, "Checkpoint every N steps (for saeamort dynamics).",
                                                   high=MAX_TOKENS),
    device: str = DEVICE,
    seed: Optional[int] = count_option(None, "Seed (default: the recipe's, else 0).", low=0, high=MAX_SEED),
    wandb: bool = typer.Option(False, help="Also log to Weights & Biases (needs a wandb login)."),
    live: bool = typer.Option(False, help="Compute activations on the fly from the model instead of caching them."),
    activations: Optional[Path] = typer.Option(None, help="Train on this activation store or world instead of the "
                                                          "model's activations (--steps may pass over it several "
                                                          "times)."),
    out: Path = out_option(..., "Run directory."),
    overwrite: bool = typer.Option(False, help="Replace a run with a different config in --out."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its newest checkpoint."),
) -> None:
    """Train one SAE; the final SAE (SAE-Lens format), checkpoints, per-step log and summary go to --out."""
    from saelens_amort.training.config import TrainConfig

    budget_tuple = comma_list(budgets, "--budgets", int)
    given = dict(arch=arch, model=model, layer=layer, source=source, tokens=tokens, steps=steps, batch_size=batch_size,
                 expansion=expansion, k=k, budgets=budget_tuple, lr=lr, checkpoint_every=checkpoint_every,
                 device=device, seed=seed, wandb=wandb or None, live=live or None,
                 activations=str(activations) if activations else None)
    if config is not None:
        cfg = TrainConfig.from_yaml(config, **given)
    else:
        cfg = TrainConfig(**{key: v for key, v in given.items() if v is not None})
    from saelens_amort.training.run import run_train  # after the checks: it loads torch and SAE-Lens

    summary = run_train(cfg, out, overwrite=overwrite, resume=resume)
    Console().print(f"{cfg.arch}: {summary['steps']} steps in {summary['train_seconds']:.0f} s "
                    f"({summary['tokens_per_second']:.0f} tokens/s); held-out NMSE {summary['nmse']:.4g}, "
                    f"L0 {summary['l0']:.3g}, dead {summary['dead_fraction']:.1%} → {out}/sae")
