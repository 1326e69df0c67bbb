"""The Typer app every command module registers on, and the logging the commands share."""

from __future__ import annotations

import logging

import typer

app = typer.Typer(
    name="saeamort",
    help="The price of amortized inference in sparse autoencoders (TransformerLens + SAE-Lens).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def register_commands() -> None:
    from saelens_amort.cli import (  # noqa: F401  (commands register themselves on import)
        alpha_sweep, collect, dynamics, eval, frontier, gis, interpret, modes, patch, toy, tpp, train, world,
    )


def setup_logging(verbose: bool) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    handler = RichHandler(console=Console(stderr=True), show_path=False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s", handlers=[handler])
    logging.getLogger("saelens_amort").setLevel(logging.INFO)
