"""`saeamort toy …`: the embedded toy world (build it from the seed, or show what ships)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from saelens_amort.cli.app import app

toy_app = typer.Typer(help="The embedded toy world: corpus, tokenizer, GPT-NeoX-style model, one SAE per family.")
app.add_typer(toy_app, name="toy")


@toy_app.command("build")
def build(
    out: Optional[Path] = typer.Option(None, help="Where to write the world (default: inside the package)."),
    scale: str = typer.Option("full", help="full (the shipped world) or tiny (seconds; for tests and smoke runs)."),
    seed: int = typer.Option(0, min=0, max=2**32 - 1, help="Master seed."),
    overwrite: bool = typer.Option(False, help="Replace an --out that is not a toy world build."),
) -> None:
    """Regenerate corpus, tokenizer, model and SAEs from the seed (replaces the target atomically)."""
    from saelens_amort.toy.build import build_toy_world, check_build_out, scale_config
    from saelens_amort.toy.paths import WEIGHTS_DIR

    cfg = scale_config(scale, seed)
    target = out or WEIGHTS_DIR
    check_build_out(target, overwrite=overwrite)
    info = build_toy_world(cfg, target)
    _print_info(info)


@toy_app.command("info")
def info(weights: Optional[Path] = typer.Option(None, help="A build directory (default: the shipped world).")) -> None:
    """Show what the shipped toy world is: model losses and each SAE's NMSE / L0."""
    from saelens_amort.toy.build import load_build_info
    from saelens_amort.toy.paths import WEIGHTS_DIR

    _print_info(load_build_info(weights or WEIGHTS_DIR))


def _print_info(info: dict) -> None:
    console = Console()
    lm = info["lm"]
    console.print(
        f"toy LM: held-out loss [bold]{lm['heldout_loss_nats']:.3f}[/] nats/token vs unigram entropy "
        f"[bold]{lm['unigram_entropy_nats']:.3f}[/]; SAEs on {info['hook_name']}; built in {info['build_seconds']:.0f} s"
    )
    table = Table("family", "architecture", "NMSE", "L0", "dead", "train s")
    for fam, s in info["saes"].items():
        table.add_row(fam, s["architecture"], f"{s['nmse']:.4f}", f"{s['l0']:.1f}", f"{s['dead_frac']:.1%}",
                      f"{s['train_seconds']:.0f}")
    console.print(table)
