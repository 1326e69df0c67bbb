"""`saeamort eval` and `saeamort sweep-semi`: the amortization analysis — every SAE × inference mode (or × semi steps),
metrics table and HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from saelens_amort.cli.app import app
from saelens_amort.cli.options import (
    DEVICE, HOOK, LAYER, MAX_TOKENS, MODEL, OUT, OVERWRITE, SEED, SOURCE, comma_list, count_option, resolve_layer,
    tokens_option,
)

SHOWN = ("nmse", "l0", "dead_rate", "real/f1@1", "real/absorption_rate", "gap_mean", "ce_recovered", "kl", "recovered",
         "code_mcc", "true_absorption")

SAE = typer.Option([], help="SAE spec: toy/<family>, saebench:[WIDTH/]FAMILY/trainer_I, RELEASE/SAE_ID; repeatable.")
SAE_PATH = typer.Option([], help="Local SAE-Lens or dictionary_learning SAE directory; repeatable.")
TOKENS = tokens_option(20_000)
CALIB = count_option(1024, "Rows of the λ-calibration slice.", high=MAX_TOKENS)
TARGET = typer.Option("l0", help="λ target: l0 (match the encoder's mean L0) or dense@0.1.")
BATCH = count_option(1024, "Activation rows per inference batch.")
SPLICE = count_option(16, "Sequences for spliced CE/KL (0 skips).", low=0)
LLM_DTYPE = typer.Option(None, help="Language-model dtype: fp32, bf16 or fp16 (default: as loaded).")
SAE_DTYPE = typer.Option(None, help="SAE dtype: fp32, bf16 or fp16 (default: as stored; objectives stay fp32).")
SEMI_STEPS = count_option(None, "K for the semi-amortized mode (default: the protocol's, fair 10 / paper 30).")
WORKERS = count_option(1, "Local CPU processes that split the activation batches (e.g. one per core; the results "
                           "equal one process's).", high=256)
ACTIVATIONS = typer.Option(None, help="Evaluate on this activation store or world instead of the model (no spliced "
                                      "CE/KL; a world adds truth metrics).")


@app.command("eval")
def eval_command(
    model: str = MODEL, layer: Optional[int] = LAYER, hook: Optional[str] = HOOK, sae: List[str] = SAE,
    sae_path: List[Path] = SAE_PATH,
    modes: Optional[str] = typer.Option(None, help="Comma-separated registered modes, each optionally with +refit "
                                                   "(default: the protocol's: fair = amortized,amortized+refit,semi,"
                                                   "unamortized,semi_ksparse,ksparse; paper = amortized,semi,"
                                                   "unamortized)."),
    protocol: str = typer.Option("fair", help="fair (per-mode λ at matched density) or paper (dense@0.1, one shared "
                                              "λ, plain ISTA, exactly 30 semi / 200 unamortized steps)."),
    lambda_policy: Optional[str] = typer.Option(None, "--lambda", help="per-mode (each λ-mode calibrated as it runs) "
                                                                       "or shared (the unamortized λ for all); "
                                                                       "default: the protocol's."),
    semi_steps: Optional[int] = SEMI_STEPS,
    metrics: str = typer.Option("reconstruction,sparsity,probes,absorption,gap,cost,splice",
                                help="Comma-separated registered metric families."),
    tokens: int = TOKENS, calib_tokens: int = CALIB, source: Optional[str] = SOURCE,
    lambda_target: Optional[str] = typer.Option(None, help="λ target: l0 (match the encoder's mean L0) or dense@0.1 "
                                                           "(default: the protocol's, l0 / paper dense@0.1)."),
    batch_size: int = BATCH, splice_sequences: int = SPLICE, out: Optional[Path] = OUT, overwrite: bool = OVERWRITE,
    device: str = DEVICE, seed: int = SEED, llm_dtype: Optional[str] = LLM_DTYPE, sae_dtype: Optional[str] = SAE_DTYPE,
    activations: Optional[Path] = ACTIVATIONS, workers: int = WORKERS,
) -> None:
    """Compare encoder codes with sparse-coding codes on the same dictionary; write results.{parquet,csv,json} and
    report.html."""
    _run("eval", out, overwrite, model=model, layer=layer, hook=hook, sae=sae, sae_path=sae_path,
         modes=comma_list(modes, "--modes") or (),
         protocol=protocol, lambda_policy=lambda_policy,
         semi_steps=semi_steps, tokens=tokens, calib_tokens=calib_tokens, source=source, lambda_target=lambda_target,
         batch_size=batch_size, splice_sequences=splice_sequences, seed=seed, device=device, llm_dtype=llm_dtype,
         sae_dtype=sae_dtype, metrics=comma_list(metrics, "--metrics"),
         activations=str(activations) if activations else None, workers=workers)


@app.command("sweep-semi")
def sweep_semi_command(
    steps: str = typer.Option("5,10,25,50", help="Comma-separated semi-amortized step counts K."),
    model: str = MODEL, layer: Optional[int] = LAYER, hook: Optional[str] = HOOK, sae: List[str] = SAE,
    sae_path: List[Path] = SAE_PATH, tokens: int = TOKENS, calib_tokens: int = CALIB, source: Optional[str] = SOURCE,
    lambda_target: str = TARGET, batch_size: int = BATCH, splice_sequences: int = SPLICE, out: Optional[Path] = OUT,
    overwrite: bool = OVERWRITE, device: str = DEVICE, seed: int = SEED, workers: int = WORKERS,
) -> None:
    """Metrics against the number of semi-amortized steps K (exactly K each; amortized = K 0, unamortized =
    converged), one λ per SAE; same outputs as eval, with the semi-steps curves in report.html."""
    ks = comma_list(steps, "--steps", int)
    _run("sweep-semi", out, overwrite, model=model, layer=layer, hook=hook, sae=sae, sae_path=sae_path,
         modes=("amortized", "semi", "unamortized"), lambda_policy="shared", semi_sweep=ks, tokens=tokens,
         calib_tokens=calib_tokens,
         source=source, lambda_target=lambda_target, batch_size=batch_size, splice_sequences=splice_sequences,
         seed=seed, device=device, workers=workers)


def _run(command: str, out: Path | None, overwrite: bool, *, model: str, layer: int | None, hook: str | None,
         sae: list[str], sae_path: list[Path], workers: int = 1, **options) -> None:
    from saelens_amort.runners.eval_config import EvalConfig

    layer = resolve_layer(model, layer, hook)
    specs = tuple(sae) + tuple(str(p) for p in sae_path)
    cfg = EvalConfig(model=model, layer=layer, hook=hook, saes=specs, **options)  # checked before torch loads
    out = out or Path("runs") / f"{command}-{Path(options.get('activations') or model).name}"
    pool = workers
    if workers > 1:  # started before this process imports torch, so that their imports overlap
        from saelens_amort.runners.eval_workers import Workers, check_workers

        check_workers(workers, cfg.device)
        pool = Workers(workers, cfg.as_json(), out, overwrite)
    from saelens_amort.runners.eval import run_eval

    df = run_eval(cfg, out, overwrite=overwrite, workers=pool)
    from saelens_amort import distributed

    if not distributed.is_main():
        return
    print_table(df)
    Console().print(f"results and report in {out}/ (report.html)")


def print_table(df, first: tuple[str, ...] = ()) -> None:
    """The headline metrics, one line per SAE × mode."""
    shown = [c for c in SHOWN if c in df.columns]
    table = Table(*first, "SAE", "mode", *shown)
    for row in df.to_dict("records"):
        table.add_row(*[_fmt(row.get(c)) for c in (*first, "sae", "mode", *shown)])
    Console(width=max(Console().width, 150)).print(table)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "—"
    return f"{v:.4g}" if isinstance(v, float) else str(v)
