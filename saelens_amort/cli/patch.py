"""`saeamort patch`: ablate / amplify / set SAE latents and generate original vs patched text side by side."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from saelens_amort.cli.app import app
from saelens_amort.cli.options import (
    DEVICE, HOOK, LAYER, MODEL, OVERWRITE, SEED, count_option, out_option, resolve_layer,
)


@app.command("patch")
def patch_command(
    prompt: List[str] = typer.Option(..., help="Prompt to continue; repeatable."),
    sae: Optional[str] = typer.Option(None, help="SAE spec or directory (default for toy: toy/topk)."),
    ablate: List[str] = typer.Option([], help="Latents to zero, e.g. 12,34; repeatable."),
    amplify: List[str] = typer.Option([], help="LATENT:FACTOR pairs, e.g. 56:3.0; repeatable."),
    set_: List[str] = typer.Option([], "--set", help="LATENT:VALUE pairs, e.g. 78:5.0; repeatable."),
    mode: str = typer.Option("amortized", help="Inference mode that gives the codes to edit."),
    lam: Optional[float] = typer.Option(None, help="λ for λ-modes (default: calibrated on the prompts to the "
                                                   "encoder's L0)."),
    max_new_tokens: int = count_option(20, "Tokens generated per continuation."),
    sample: bool = typer.Option(False, help="Sample (seeded) instead of greedy decoding."),
    seed: int = SEED,
    model: str = MODEL, layer: Optional[int] = LAYER, hook: Optional[str] = HOOK, device: str = DEVICE,
    out: Optional[Path] = out_option(None, "Also write patch.csv and report.html here."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Generate each prompt's continuation with and without the latent edit (SAE error term kept)."""
    from saelens_amort.catalog import check_modes
    from saelens_amort.errors import SaeAmortError
    from saelens_amort.run_folder import check_run_folder, record_run

    ablate, amplify, set_ = (",".join(v) for v in (ablate, amplify, set_))
    if not any(t.strip() for t in f"{ablate},{amplify},{set_}".split(",")):
        raise SaeAmortError("give at least one latent with --ablate, --amplify or --set")
    check_modes([mode])
    if any(not p.strip() for p in prompt):
        raise SaeAmortError("--prompt must not be empty (the continuation starts from its tokens)")
    if sae is None:
        if model != "toy":
            raise SaeAmortError("--sae is required for models other than the toy")
        sae = "toy/topk"
    run = {"model": model, "sae": sae, "layer": layer, "hook": hook, "mode": mode, "lam": lam, "prompts": list(prompt),
           "ablate": ablate, "amplify": amplify, "set": set_, "seed": seed, "greedy": not sample,
           "max_new_tokens": max_new_tokens}
    if out is not None:  # a folder another command (or another patch) wrote is refused before any work
        check_run_folder(Path(out), "patch", run, overwrite=overwrite)
    # after the checks above (torch-free): these load torch, TransformerLens and SAE-Lens
    from saelens_amort.devices import check_device
    from saelens_amort.interventions import parse_edit, patch_generate
    from saelens_amort.interventions.patching import calibrate_on_prompts
    from saelens_amort.interventions.report import write_patch_outputs
    from saelens_amort.models import load_model
    from saelens_amort.runners.collect import resolve_hook
    from saelens_amort.saes import check_sae_fits, load_sae

    edit = parse_edit(ablate, amplify, set_)
    device = check_device(device)
    lm = load_model(model, device=device)
    sae_obj = load_sae(sae, device=device)
    hook_name = resolve_hook(lm.cfg.n_layers, resolve_layer(model, layer, hook), hook)
    check_sae_fits(sae_obj, lm, hook_name)
    if lam is None:
        lam = calibrate_on_prompts(lm, sae_obj, hook_name, prompt, mode, max_new_tokens)
    rows = patch_generate(lm, sae_obj, edit, prompt, max_new_tokens=max_new_tokens, greedy=not sample, seed=seed,
                          hook_name=hook_name, mode=mode, lam=lam)
    table = Table("prompt", "original", "patched", show_lines=True)
    for r in rows:
        table.add_row(r.prompt, r.original, r.patched)
    Console(width=max(Console().width, 120)).print(table)
    if out is not None:
        record_run(Path(out), "patch", run)
        write_patch_outputs(Path(out), rows, {"model": model, "sae": sae, "hook": hook_name, "mode": mode, "lam": lam,
                                             "ablate": ablate, "amplify": amplify, "set": set_, "seed": seed,
                                             "greedy": not sample, "max_new_tokens": max_new_tokens})
        Console().print(f"patch.csv and report.html in {out}/")

