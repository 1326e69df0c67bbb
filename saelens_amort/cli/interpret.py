"""`saeamort interpret` (top contexts, feature density) and `saeamort cross-domain` (train on A, test on B)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from saelens_amort.cli.app import app
from saelens_amort.cli.options import (
    DEVICE, LAYER, MODEL, OVERWRITE, SEED, SOURCE, comma_list, count_option, out_option, resolve_layer,
    source_option, tokens_option,
)


@app.command("interpret")
def interpret_command(
    sae: Optional[str] = typer.Option(None, help="SAE spec or directory (default for toy: toy/topk)."),
    latents: Optional[str] = typer.Option(None, help="Comma-separated latents (default: the most frequent non-dense "
                                                     "ones)."),
    n_latents: int = count_option(16, "How many latents when --latents is not given."),
    top_n: int = count_option(10, "Contexts per latent."),
    window: int = count_option(10, "Tokens of context before the peak token.", low=0),
    mode: str = typer.Option("amortized", help="Inference mode giving the codes."),
    tokens: int = tokens_option(20_000, "Tokens scanned."),
    model: str = MODEL, layer: Optional[int] = LAYER,
    source: Optional[str] = SOURCE, seed: int = SEED, device: str = DEVICE,
    out: Path = out_option(Path("runs/interpret")), overwrite: bool = OVERWRITE,
) -> None:
    """Top-activating contexts per latent (JSON, markdown, HTML with a plotly view per latent) and feature density."""
    from saelens_amort.runners.tpp_config import TppConfig

    chosen = comma_list(latents, "--latents", int)  # checked before the runner loads torch
    cfg = TppConfig(model=model, layer=resolve_layer(model, layer, None), sae=sae, modes=(mode,), tokens=tokens,
                    source=source, seed=seed, device=device)
    from saelens_amort.runners.interpret import run_interpret  # after the checks: it loads torch and SAE-Lens

    views = run_interpret(cfg, out, latents=chosen, n_latents=n_latents, top_n=top_n, window=window,
                          overwrite=overwrite)
    Console().print(f"{len(views.latents)} latents → {out}/ (contexts.json, contexts.md, report.html)")


@app.command("cross-domain")
def cross_domain_command(
    domain_a: str = source_option("toy:news", "Source of domain A."),
    domain_b: str = source_option("toy:code", "Source of domain B."),
    arch: str = typer.Option("topk", help="SAE family trained on each domain."),
    tokens: int = tokens_option(102_400, "Training tokens per domain."),
    batch_size: int = count_option(1024, "Tokens per step."),
    expansion: int = count_option(8, "d_sae / d_in."),
    k: int = count_option(16, "Active latents (TopK families)."),
    model: str = MODEL, layer: Optional[int] = LAYER,
    seed: int = SEED, device: str = DEVICE,
    out: Path = out_option(Path("runs/cross-domain")),
    overwrite: bool = typer.Option(False, help="Replace earlier runs in --out."),
) -> None:
    """Train on A and on B, evaluate both on both: degradation table and per-latent selectivity."""
    from saelens_amort.training.config import TrainConfig

    cfg = TrainConfig(arch=arch, model=model, layer=resolve_layer(model, layer, None), tokens=tokens,
                      batch_size=batch_size, expansion=expansion, k=k, seed=seed, device=device)
    from saelens_amort.views.cross_domain import run_cross_domain

    df = run_cross_domain(cfg, domain_a, domain_b, out, overwrite=overwrite)
    Console().print(df[["trained_on", "evaluated_on", "nmse", "l0", "nmse_degradation"]].to_string(index=False))
    Console().print(f"cross_domain.csv, selectivity.csv and report.html in {out}/")
