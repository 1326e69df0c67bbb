"""The `saeamort` command: a Typer app (`cli/app.py`), one module per command group, each thin (parse → runner →
print).

This module is the CLI's entry and the one place that imports lazily: nothing heavy (torch, SAE-Lens,
TransformerLens) loads before a command runs, so `--help`, `modes` and usage errors answer at once. Exit statuses:
0 done; 2 a user mistake (`SaeAmortError` or a usage error: one line on stderr, no traceback); 130 interrupted
(Ctrl-C at any point, imports included: one line on stderr). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys

INTERRUPTED = 130
USER_ERROR = 2


def main(argv: list[str] | None = None) -> None:
    # MPS: run what Metal lacks on the CPU; torch reads this when it loads, so set it before anything imports torch.
    os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    try:
        status = _run(argv)
    except KeyboardInterrupt:
        status = _interrupted()
    sys.exit(status)


def _run(argv: list[str] | None) -> int:
    import typer

    from saelens_amort.cli.app import app, register_commands, setup_logging
    from saelens_amort.errors import SaeAmortError

    register_commands()
    setup_logging(verbose=False)
    try:
        result = app(args=argv, prog_name="saeamort", standalone_mode=False)
    except SaeAmortError as err:
        return _error(str(err))
    except typer.Exit as err:
        return err.exit_code
    except typer.Abort:
        return _interrupted()
    except typer.TyperException as err:  # typer's own click: usage errors, bad and missing parameters, …
        return _usage_error(err)
    if result == INTERRUPTED:  # typer turns Ctrl-C inside a command into Exit(130) and returns its code
        return _interrupted()
    return result if isinstance(result, int) else 0


def _usage_error(err) -> int:
    from typer._click.exceptions import NoArgsIsHelpError

    if isinstance(err, NoArgsIsHelpError):  # bare `saeamort` or a bare command group: its help, as click shows it
        err.show()
        return USER_ERROR
    ctx = getattr(err, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return _error(err.format_message() + hint, getattr(err, "exit_code", USER_ERROR) or USER_ERROR)


def _error(message: str, status: int = USER_ERROR) -> int:
    print(f"saeamort: error: {' '.join(message.split())}", file=sys.stderr)
    return status


def _interrupted() -> int:
    print("saeamort: interrupted; finished work is kept (collect and eval resume where they stopped)", file=sys.stderr)
    return INTERRUPTED
