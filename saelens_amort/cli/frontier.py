"""`saeamort frontier`: each mode's NMSE (and CE/KL) against L0 over its density knob, and the price of amortization
at the encoder's point."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from saelens_amort.cli.app import app
from saelens_amort.cli.eval import (
    ACTIVATIONS, BATCH, CALIB, LLM_DTYPE, SAE, SAE_DTYPE, SAE_PATH, SEMI_STEPS, SPLICE, TOKENS, _fmt,
)
from saelens_amort.cli.options import (
    DEVICE, HOOK, LAYER, MODEL, OUT, OVERWRITE, SEED, SOURCE, comma_list, resolve_layer,
)

PRICE_SHOWN = ("encoder_l0", "encoder_nmse", "nmse_ratio", "l0_needed", "l0_ratio", "note")


@app.command("frontier")
def frontier_command(
    model: str = MODEL, layer: Optional[int] = LAYER, hook: Optional[str] = HOOK, sae: List[str] = SAE,
    sae_path: List[Path] = SAE_PATH,
    modes: str = typer.Option("amortized,semi,unamortized", help="Comma-separated registered modes."),
    protocol: str = typer.Option("fair", help="fair (solvers to their tolerance) or paper (plain ISTA, exactly 30 semi "
                                              "/ 200 unamortized steps from zero, as eval's paper protocol)."),
    semi_steps: Optional[int] = SEMI_STEPS,
    metrics: str = typer.Option("reconstruction,sparsity,splice", help="Add 'splice' for CE/KL along the frontiers."),
    tokens: int = TOKENS, calib_tokens: int = CALIB, source: Optional[str] = SOURCE, batch_size: int = BATCH,
    splice_sequences: int = SPLICE, out: Optional[Path] = OUT, overwrite: bool = OVERWRITE, device: str = DEVICE,
    seed: int = SEED, llm_dtype: Optional[str] = LLM_DTYPE, sae_dtype: Optional[str] = SAE_DTYPE,
    activations: Optional[Path] = ACTIVATIONS,
    n_lambdas: int = typer.Option(10, help="λ values per L1 mode, geometric from λ_max to λ_max / --lambda-ratio."),
    lambda_ratio: float = typer.Option(300.0, help="λ_max / the smallest λ of the default grid."),
    lambdas: Optional[str] = typer.Option(None, help="Explicit comma-separated λ grid instead of the default."),
    k_multipliers: str = typer.Option("0.25,0.5,1,2,4", help="k grid = round(encoder L0 × each), in [1, d_sae]."),
    ks: Optional[str] = typer.Option(None, help="Explicit comma-separated k grid instead of --k-multipliers."),
    threshold_scales: str = typer.Option("0.5,0.75,1,1.5,2", help="Factors on a JumpReLU encoder's thresholds."),
) -> None:
    """Sweep density per mode (λ, k, the encoder's own k or threshold scale); write frontier.{parquet,csv,json} and
    report.html with the price of amortization at the encoder's point."""
    from saelens_amort.runners.eval_config import EvalConfig
    from saelens_amort.runners.frontier_config import FrontierConfig

    ev = EvalConfig(model=model, layer=resolve_layer(model, layer, hook), hook=hook,
                    saes=tuple(sae) + tuple(str(p) for p in sae_path),
                    modes=comma_list(modes, "--modes"), protocol=protocol, semi_steps=semi_steps,
                    metrics=comma_list(metrics, "--metrics"), tokens=tokens,
                    calib_tokens=calib_tokens, source=source, batch_size=batch_size,
                    splice_sequences=splice_sequences, seed=seed, device=device, llm_dtype=llm_dtype,
                    sae_dtype=sae_dtype, activations=str(activations) if activations else None)
    cfg = FrontierConfig(eval=ev, n_lambdas=n_lambdas, lambda_ratio=lambda_ratio,
                         lambdas=comma_list(lambdas, "--lambdas", float) or (), ks=comma_list(ks, "--ks", int) or (),
                         k_multipliers=comma_list(k_multipliers, "--k-multipliers", float),
                         threshold_scales=comma_list(threshold_scales, "--threshold-scales", float))
    out = out or Path("runs") / f"frontier-{Path(model).name}"
    from saelens_amort.runners.frontier import run_frontier  # after the checks: it loads torch and SAE-Lens

    _, prices = run_frontier(cfg, out, overwrite=overwrite)
    table = Table("SAE", "mode", *PRICE_SHOWN)
    for row in prices.to_dict("records"):
        table.add_row(*[_fmt(row.get(c)) for c in ("sae", "mode", *PRICE_SHOWN)])
    Console(width=max(Console().width, 150)).print(table)
    Console().print(f"frontier.parquet, frontier.json and report in {out}/ (report.html)")
