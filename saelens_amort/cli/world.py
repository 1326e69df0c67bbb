"""`saeamort world …`: the ground-truth feature world (build its activations; train SAEs of every family on it)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from saelens_amort.cli.app import app
from saelens_amort.cli.options import comma_list

world_app = typer.Typer(help="A ground-truth feature world: known atoms and codes, stored as an activation store.")
app.add_typer(world_app, name="world")


@world_app.command("build")
def build(
    preset: str = typer.Option("small", help="small (d 128, 2 048 features) or medium (d 384, 12 288 features)."),
    out: Path = typer.Option(Path("runs/world-small"), help="World directory (an activation store with its truth)."),
    tokens: Optional[int] = typer.Option(None, help="Rows to draw (default: the preset's)."),
    seed: Optional[int] = typer.Option(None, min=0, max=2**32 - 1, help="Seed (default: the preset's)."),
    overwrite: bool = typer.Option(False, help="Replace another world or store in --out."),
) -> None:
    """Draw a world's activations and truth into --out (a complete world of the same parameters is reused)."""
    from saelens_amort.world import build_world
    from saelens_amort.world.config import preset as get_preset

    overrides = {k: v for k, v in (("n_tokens", tokens), ("seed", seed)) if v is not None}
    world = build_world(get_preset(preset, **overrides), out, overwrite=overwrite)
    cfg = world.config
    Console().print(f"world in {world.path}: {cfg.n_tokens} rows, d {cfg.d}, {cfg.n_features} true features "
                    f"(mean L0 {cfg.mean_l0:g}, {cfg.n_parents} parents × {cfg.children} children, "
                    f"{cfg.n_groups} near-parallel groups of {cfg.group_size}, noise {cfg.noise:g})")


@world_app.command("train")
def train(
    world: Path = typer.Option(..., help="A world built by `saeamort world build`."),
    out: Path = typer.Option(..., help="Where each family × width run goes (<family>-x<width>/)."),
    families: Optional[str] = typer.Option(None, help="Comma-separated families (default: every SAE-Lens family)."),
    widths: str = typer.Option("1,2", help="d_sae as multiples of the number of true features."),
    tokens: Optional[int] = typer.Option(None, help="Training rows per SAE, each passed over twice (default: the "
                                                 "world's rows less 4096 held out)."),
    overwrite: bool = typer.Option(False, help="Retrain runs that are already finished."),
) -> None:
    """Train SAEs of every family at widths ×1 and ×2 on a world (SAE-Lens' trainer, as `saeamort train`)."""
    from saelens_amort.world import World
    from saelens_amort.world.saes import FAMILIES, train_world_saes

    fams = comma_list(families, "--families") or FAMILIES
    ws = comma_list(widths, "--widths", int)
    summaries = train_world_saes(World.open(world), out, families=fams, widths=ws,
                                 tokens=tokens, overwrite=overwrite)
    table = Table("run", "NMSE", "L0", "dead")
    for name, s in summaries.items():
        table.add_row(name, f"{s.get('nmse', float('nan')):.4f}", f"{s.get('l0', float('nan')):.1f}",
                      f"{s.get('dead_frac', float('nan')):.1%}")
    Console().print(table)
