"""`saeamort alpha-sweep`: scale chosen features by α where they are live; ΔCE, KL and logit deltas per feature
and per layer."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from saelens_amort.cli.app import app
from saelens_amort.cli.options import (
    MAX_SEED, OPTIONAL_DEVICE, OVERWRITE, bounded, comma_list, count_option, out_option, source_option,
)


@app.command("alpha-sweep")
def alpha_sweep_command(
    features: Optional[Path] = typer.Option(None, help="Feature list: CSV layer,feature[,label], a Neuronpedia list "
                                                       "export (JSON or CSV; layer ids like 8-res-jb, an index "
                                                       "column) or a select-latents JSON."),
    sae: List[str] = typer.Option([], help="LAYER=SPEC, one per layer (default for toy: 2=toy/topk); repeatable; "
                                          "overrides --release for its layer."),
    release: Optional[str] = typer.Option(None, help="SAE-Lens release (e.g. gpt2-small-res-jb): each layer's SAE id "
                                                     "is read from the release directory."),
    layers: Optional[str] = typer.Option(None, help="Layers of --release, e.g. 0-11 or 2,4,6-8 (default: the "
                                                    "features' layers)."),
    config: Optional[Path] = typer.Option(None, help="Sweep YAML: these options' names as keys, saes as a mapping "
                                                     "LAYER: SPEC (options given here override it)."),
    alphas: Optional[str] = typer.Option(None, help="Comma-separated scale factors (default 0,0.5,1,2,4)."),
    percentile: Optional[float] = typer.Option(None, help="Live = above this percentile of the latent's positive "
                                                          "values (default 90)."),
    sequences: Optional[int] = count_option(None, "Evaluation sequences (default 16)."),
    context_size: Optional[int] = count_option(None, "Tokens per sequence (default 64)."),
    batch: Optional[int] = count_option(None, "Sequences per forward pass, halved on CUDA OOM (default 16)."),
    mode: Optional[str] = typer.Option(None, help="Inference mode of the codes that are scaled (default amortized)."),
    model: Optional[str] = typer.Option(None, help="TransformerLens name, local HF checkpoint dir, or 'toy' "
                                                   "(default toy)."),
    source: Optional[str] = source_option(None, "Text source: toy, a .txt/.jsonl/.parquet file, hf:DATASET "
                                                "(default: toy for toy, the Pile otherwise)."),
    seed: Optional[int] = typer.Option(None, help="Seed of the toy corpus stream (default 0).",
                                       callback=bounded(low=0, high=MAX_SEED)),
    device: Optional[str] = OPTIONAL_DEVICE,
    out: Optional[Path] = out_option(None, "Output directory (default runs/alpha-sweep)."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Per feature and α: ΔCE, KL and top logit deltas; per_feature_metrics.csv, per_layer_summary.csv, report."""
    alpha_values = comma_list(alphas, "--alphas", float)
    from saelens_amort.runners.alpha_sweep_config import resolve_sweep  # torch-free: every check answers at once

    cfg, feature_list, out_dir = resolve_sweep(config, sae, dict(
        features=features, release=release, layers=layers, alphas=alpha_values, percentile=percentile,
        sequences=sequences, context_size=context_size, batch=batch, mode=mode, model=model, source=source, seed=seed,
        device=device, out=out))
    from saelens_amort.runners.alpha_sweep import run_alpha_sweep  # loads torch: after the sweep is resolved

    df = run_alpha_sweep(cfg, feature_list, out_dir, overwrite=overwrite)
    Console().print(f"{df['feature'].nunique() if len(df) else 0} features × {len(cfg.alphas)} α → {out_dir}/ "
                    "(per_feature_metrics.csv, per_layer_summary.csv, report.md, report.html)")
