"""`saeamort gis`: steer or ablate latents at a KL-calibrated strength and compare generations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from saelens_amort.cli.app import app
from saelens_amort.cli.options import (
    DEVICE, LAYER, MODEL, OVERWRITE, SEED, SOURCE, comma_list, count_option, out_option, resolve_layer,
)


@app.command("gis")
def gis_command(
    latents: Optional[str] = typer.Option(None, help="Comma-separated latent indices (or --latents-file)."),
    latents_file: Optional[Path] = typer.Option(None, help="select-latents JSON (latents and class id)."),
    kl: str = typer.Option("0.33", help="Comma-separated KL targets, e.g. 0.1,0.33,1.0."),
    kind: str = typer.Option("steer", help="steer (along the decoder directions) or ablate."),
    mode: str = typer.Option("amortized", help="Inference mode giving the codes (ablate)."),
    class_id: Optional[int] = typer.Option(None, help="Class whose probability shift is scored."),
    prompt: List[str] = typer.Option([], help="Prompt; repeatable (default: openings of source documents)."),
    max_new_tokens: int = count_option(16, "Tokens generated per continuation."),
    model: str = MODEL,
    sae: Optional[str] = typer.Option(None, help="SAE spec (default for toy: toy/topk)."),
    layer: Optional[int] = LAYER,
    source: Optional[str] = SOURCE, seed: int = SEED, device: str = DEVICE,
    out: Path = out_option(Path("runs/gis")), overwrite: bool = OVERWRITE,
) -> None:
    """Calibrate α so the mean next-token KL hits each target, then generate with and without the intervention."""
    from saelens_amort.errors import SaeAmortError
    from saelens_amort.runners.gis_config import GisConfig

    targets = comma_list(kl, "--kl", float)
    chosen = comma_list(latents, "--latents", int) or ()
    if latents_file is not None:
        try:
            rec = json.loads(Path(latents_file).read_text())
            chosen = chosen or tuple(int(j) for j in rec["latents"])
            class_id = class_id if class_id is not None else rec.get("class_id")
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise SaeAmortError(f"cannot read latents from {latents_file} ({type(e).__name__}: {e})") from None
    if sae is None:
        if model != "toy":
            raise SaeAmortError("--sae is required for models other than the toy")
        sae = "toy/topk"
    cfg = GisConfig(model=model, sae=sae, layer=resolve_layer(model, layer, None), latents=chosen, class_id=class_id,
                    kind=kind, mode=mode, kl_targets=targets, prompts=tuple(prompt), max_new_tokens=max_new_tokens,
                    source=source, seed=seed, device=device)
    if not chosen:
        raise SaeAmortError("no latents to intervene on: give --latents (e.g. 3,17) or --latents-file")
    from saelens_amort.runners.gis import run_gis  # after the checks: it loads torch and SAE-Lens

    df = run_gis(cfg, out, overwrite=overwrite)
    for (target, alpha, reached), _ in df.groupby(["kl_target", "alpha", "kl"]):
        Console().print(f"KL target {target:g}: α = {alpha:.4g} (KL {reached:.4g})")
    Console().print(f"gis.csv, gis.json and report.html in {out}/")
