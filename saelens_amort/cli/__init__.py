"""The `saeamort` command: a Typer app, one module per command group, each thin (parse → runner → print).

User mistakes (`SaeAmortError`) print one line on stderr and exit with status 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import logging
import sys

import click
import typer

from saelens_amort.errors import SaeAmortError

app = typer.Typer(
    name="saeamort",
    help="The price of amortized inference in sparse autoencoders (TransformerLens + SAE-Lens).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    from saelens_amort.cli import alpha_sweep, collect, dynamics, eval, frontier, gis, interpret, modes, patch, toy, tpp, train  # noqa: F401  (commands register themselves on import)


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    handler = RichHandler(console=__import__("rich.console").console.Console(stderr=True), show_path=False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s", handlers=[handler])
    logging.getLogger("saelens_amort").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> None:
    _register()
    _setup_logging(verbose=False)
    try:
        app(args=argv, standalone_mode=False)
    except SaeAmortError as err:
        print(f"saeamort: error: {err}", file=sys.stderr)
        sys.exit(2)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        print("saeamort: interrupted; completed shards are kept and the next run resumes", file=sys.stderr)
        sys.exit(130)
