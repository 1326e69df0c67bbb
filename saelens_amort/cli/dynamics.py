"""`saeamort dynamics`: evaluate every checkpoint of an SAE's training run and plot the metrics against the step."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from saelens_amort.cli.app import app
from saelens_amort.cli.eval import BATCH, CALIB, SEMI_STEPS, SPLICE, TARGET, TOKENS, print_table
from saelens_amort.cli.options import (
    DEVICE, HOOK, LAYER, MODEL, OUT, OVERWRITE, SEED, SOURCE, comma_list, resolve_layer,
)


@app.command("dynamics")
def dynamics_command(
    checkpoints: Path = typer.Option(..., help="Folder of SAE checkpoints (SAE-Lens or dictionary_learning, any "
                                               "depth); the step comes from trainer metadata or the name."),
    model: str = MODEL, layer: Optional[int] = LAYER, hook: Optional[str] = HOOK,
    modes: str = typer.Option("amortized,semi,unamortized", help="Comma-separated registered modes."),
    semi_steps: Optional[int] = SEMI_STEPS,
    tokens: int = TOKENS, calib_tokens: int = CALIB, source: Optional[str] = SOURCE, lambda_target: str = TARGET,
    batch_size: int = BATCH, splice_sequences: int = SPLICE, out: Optional[Path] = OUT, overwrite: bool = OVERWRITE,
    device: str = DEVICE, seed: int = SEED,
) -> None:
    """Index --checkpoints into checkpoint_index.parquet, evaluate each checkpoint in every mode (one λ each), and
    write results.{parquet,csv,json} and report.html with metrics vs training step."""
    from saelens_amort.runners.eval_config import EvalConfig

    layer = resolve_layer(model, layer, hook)
    cfg = EvalConfig(model=model, layer=layer, hook=hook, modes=comma_list(modes, "--modes"),
                     semi_steps=semi_steps, tokens=tokens, calib_tokens=calib_tokens, source=source,
                     lambda_target=lambda_target, batch_size=batch_size, splice_sequences=splice_sequences, seed=seed,
                     device=device)
    out = out or Path("runs") / f"dynamics-{checkpoints.name}"
    from saelens_amort.runners.dynamics import run_dynamics  # after the checks: it loads torch and SAE-Lens

    df = run_dynamics(cfg, checkpoints, out, overwrite=overwrite)
    print_table(df, first=("step",))
    Console().print(f"results, checkpoint_index.parquet and report in {out}/")
