"""`saeamort alpha-sweep`: scale chosen features by α where they are live; ΔCE, KL and logit deltas per feature
and per layer."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from saelens_amort.cli.app import app
from saelens_amort.cli.options import DEVICE, MODEL, SEED, SOURCE, count_option, out_option


@app.command("alpha-sweep")
def alpha_sweep_command(
    features: Path = typer.Option(..., help="CSV layer,feature[,label] (Neuronpedia list export) or latents JSON."),
    sae: List[str] = typer.Option([], help="LAYER=SPEC, one per layer (default for toy: 2=toy/topk); repeatable."),
    alphas: str = typer.Option("0,0.5,1,2,4", help="Comma-separated scale factors."),
    percentile: float = typer.Option(90.0, help="Live = above this percentile of the latent's positive values."),
    sequences: int = count_option(16, "Evaluation sequences."),
    context_size: int = count_option(64, "Tokens per sequence."),
    batch: int = count_option(16, "Sequences per forward pass (halved on CUDA OOM)."),
    mode: str = typer.Option("amortized", help="Inference mode of the codes that are scaled."),
    model: str = MODEL,
    source: Optional[str] = SOURCE, seed: int = SEED, device: str = DEVICE,
    out: Path = out_option(Path("runs/alpha-sweep")),
) -> None:
    """Per feature and α: ΔCE, KL and top logit deltas; per_feature_metrics.csv, per_layer_summary.csv, report."""
    from saelens_amort.errors import SaeAmortError
    from saelens_amort.interventions.alpha_sweep import read_features
    from saelens_amort.runners.alpha_sweep import SweepConfig, parse_layer_saes, run_alpha_sweep

    try:
        alpha_values = tuple(float(a) for a in alphas.split(",") if a.strip())
    except ValueError:
        raise SaeAmortError(f"--alphas must be comma-separated numbers, got {alphas!r}") from None
    if not 0 <= percentile < 100:
        raise SaeAmortError(f"--percentile must be in [0, 100), got {percentile}")
    saes = parse_layer_saes(sae) if sae else ((2, "toy/topk"),) if model == "toy" else ()
    cfg = SweepConfig(model=model, saes=saes, alphas=alpha_values, percentile=percentile, sequences=sequences,
                      context_size=context_size, source=source, batch=batch, mode=mode, seed=seed, device=device)
    df = run_alpha_sweep(cfg, read_features(features), out)
    Console().print(f"{df['feature'].nunique() if len(df) else 0} features × {len(alpha_values)} α → {out}/ "
                    "(per_feature_metrics.csv, per_layer_summary.csv, report.md, report.html)")
