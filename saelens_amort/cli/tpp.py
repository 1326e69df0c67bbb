"""`saeamort select-latents` and `saeamort tpp`: targeted probe perturbation with any inference mode."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from saelens_amort.cli.app import app
from saelens_amort.cli.options import (
    DEVICE, HOOK, LAYER, MODEL, OVERWRITE, SEED, SOURCE, comma_list, count_option, out_file_option, out_option,
    resolve_layer, tokens_option,
)

TOKENS = tokens_option(20_000, "Tokens of labelled documents read.")
SAE = typer.Option(None, help="SAE spec or directory (default for toy: toy/topk).")
POOLING = typer.Option("mean", help="Pool tokens per document: mean or last.")


def _cfg(model: str, layer: int | None, hook: str | None, **kw):
    from saelens_amort.runners.tpp_config import TppConfig

    return TppConfig(model=model, layer=resolve_layer(model, layer, hook), hook=hook, **kw)


@app.command("select-latents")
def select_latents_command(
    class_id: int = typer.Option(..., help="Class whose latents to select (index into the source's labels)."),
    top_m: int = count_option(10, "Latents to keep."),
    mode: str = typer.Option("amortized", help="Inference mode giving the codes."),
    out: Path = out_file_option(Path("latents.json"), "Output JSON (mode, λ, latents, scores)."),
    overwrite: bool = OVERWRITE,
    model: str = MODEL, layer: Optional[int] = LAYER, hook: Optional[str] = HOOK, sae: Optional[str] = SAE,
    tokens: int = TOKENS, source: Optional[str] = SOURCE, pooling: str = POOLING, seed: int = SEED,
    device: str = DEVICE,
) -> None:
    """Top-M latents for one class by s_j = ⟨D_j, w_c⟩ · (E[z_j | c] − E[z_j | ¬c])."""
    cfg = _cfg(model=model, layer=layer, hook=hook, sae=sae, modes=(mode,), tokens=tokens, source=source,
               pooling=pooling, seed=seed, device=device)
    from saelens_amort.runners.tpp import run_select  # after the checks: it loads torch and SAE-Lens

    rec = run_select(cfg, class_id, top_m, mode, out, overwrite=overwrite)
    Console().print(f"class {class_id} ({rec['class_name']}), mode {mode}, λ {rec['lam']}: latents {rec['latents']}"
                    f" → {out}")


@app.command("tpp")
def tpp_command(
    top_m: str = typer.Option("2,5,10,20,50,100", help="Comma-separated numbers of ablated latents M."),
    modes: str = typer.Option("amortized,semi,unamortized", help="Comma-separated registered modes."),
    out: Optional[Path] = out_option(None, "Output directory (default runs/tpp-<model>)."),
    overwrite: bool = OVERWRITE,
    model: str = MODEL, layer: Optional[int] = LAYER, hook: Optional[str] = HOOK, sae: Optional[str] = SAE,
    tokens: int = TOKENS, source: Optional[str] = SOURCE, pooling: str = POOLING, seed: int = SEED,
    device: str = DEVICE,
) -> None:
    """Ablate each class's top-M latents and report the TPP score per M and mode (random latents as baseline)."""
    from rich.table import Table

    from saelens_amort.runners.tpp_config import check_top_ms

    ms = comma_list(top_m, "--top-m", int)
    check_top_ms(ms)
    cfg = _cfg(model=model, layer=layer, hook=hook, sae=sae, tokens=tokens, source=source, pooling=pooling,
               seed=seed, device=device, modes=comma_list(modes, "--modes"))
    out = out or Path("runs") / f"tpp-{Path(model).name}"
    from saelens_amort.runners.tpp import run_tpp  # after the checks: it loads torch and SAE-Lens

    df = run_tpp(cfg, ms, out, overwrite=overwrite)
    table = Table("mode", "M", "TPP", "random")
    for r in df.to_dict("records"):
        table.add_row(r["mode"], str(r["top_m"]), f"{r['tpp']:.3f}", f"{r['tpp_random']:.3f}")
    Console().print(table)
    Console().print(f"tpp.csv, tpp.json and report.html in {out}/")
