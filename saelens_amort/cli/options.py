"""Options the commands share, written once: the same name, default and help everywhere, and checked as they are
parsed, so a bad value is one clear line (exit 2) before anything heavy loads.

Defaults agree across commands: `--model toy` (the embedded world, offline), `--device auto` (cuda, then mps, then
cpu), and `--layer` follows the model (the toy's block 2; pythia-160m-deduped's default-suite block 8; any other
model must name its layer or hook).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import typer

from saelens_amort.errors import SaeAmortError

MAX_TOKENS = 10_000_000_000
"""The most activation rows / tokens any count option accepts: far beyond a real run, so only a typo trips it."""
MAX_COUNT = 1_000_000
"""The most sequences, latents or rows per batch a count option accepts."""
MAX_SEED = 2**63 - 1


def bounded(*, low: int = 1, high: int = MAX_COUNT) -> Callable[..., int | None]:
    """An option callback refusing integers outside [low, high] (None passes: "not given")."""

    def check(param: typer.CallbackParam, value: int | None) -> int | None:
        if value is None or low <= value <= high:
            return value
        flag = param.opts[0]
        if value < low:
            raise SaeAmortError(f"{flag} must be {'positive' if low == 1 else f'at least {low}'}, got {value}")
        raise SaeAmortError(f"{flag} must be at most {high:,}, got {value:,}")

    return check


def comma_list(text: str | None, option: str, kind: type = str) -> tuple | None:
    """The items of a comma-separated option value (None: the option was not given). A value that names nothing
    (`--ks ""`) is refused rather than read as "use the default"."""
    if text is None:
        return None
    try:
        items = tuple(kind(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        what = {int: "integers", float: "numbers"}.get(kind, "values")
        raise SaeAmortError(f"{option} must be comma-separated {what}, got {text!r}") from None
    if not items:
        raise SaeAmortError(f"{option} is empty: give at least one value")
    return items


def _device(value: str | None) -> str | None:
    from saelens_amort.devices import parse_device  # torch-free: the runner resolves auto and checks availability

    return None if value is None else parse_device(value)


def _source(value: str | None) -> str | None:
    from saelens_amort.source_spec import check_source  # torch-free: spelling, shape, file existence and extension

    if value is not None:
        check_source(value)
    return value


def _out(value: Path | None) -> Path | None:
    if value is not None:
        check_out_dir(value)
    return value


def _out_file(value: Path) -> Path:
    if value.is_dir():
        raise SaeAmortError(f"--out {value} is a folder; give a file name")
    check_out_dir(value.parent)
    return value


def check_out_dir(out: Path) -> None:
    """`out` can be (or become) a folder: neither it nor any folder above it is an existing file."""
    for path in (out, *out.parents):
        if path.exists() and not path.is_dir():
            where = "is" if path == out else f"is under {path}, which is"
            raise SaeAmortError(f"--out {out} {where} a file, not a folder; choose another --out")


def tokens_option(default: int | None, help: str = "Activation rows evaluated.") -> typer.models.OptionInfo:
    return typer.Option(default, help=help, callback=bounded(high=MAX_TOKENS))


def count_option(default: int | None, help: str, *, low: int = 1, high: int = MAX_COUNT) -> typer.models.OptionInfo:
    return typer.Option(default, help=help, callback=bounded(low=low, high=high))


MODEL = typer.Option("toy", help="TransformerLens name, local HF checkpoint dir, or 'toy'.")
LAYER = typer.Option(None, help="Block whose hook_resid_post to read (default: 2 for the toy, 8 for "
                                "pythia-160m-deduped; other models must give --layer or --hook).",
                     callback=bounded(low=0, high=10_000))
HOOK = typer.Option(None, help="Any hook name instead of --layer, e.g. blocks.2.hook_mlp_out.")
SOURCE = typer.Option(None, help="Text source: toy, toy:news, toy:code, a .txt/.jsonl/.parquet file, "
                                 "hf:DATASET[:CONFIG][@SPLIT] (default: toy for the toy, a real corpus otherwise).",
                      callback=_source)
SEED = typer.Option(0, help="Seed of the toy corpus stream and of sampling.", callback=bounded(low=0, high=MAX_SEED))
DEVICE = typer.Option("auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps (Apple Silicon; "
                                   "what MPS lacks runs on the CPU).", callback=_device)
OPTIONAL_DEVICE = typer.Option(None, help="auto, cpu, cuda, cuda:N or mps (default: a config file's, else cpu).",
                               callback=_device)
"""--device for commands whose options may also come from a config file (None: not given here)."""
OUT = typer.Option(None, help="Output directory (default runs/<command>-<model>).", callback=_out)
OVERWRITE = typer.Option(False, help="Replace results of a different config in --out.")


def source_option(default: str | None, help: str) -> typer.models.OptionInfo:
    """A text-source option with its own default and help, checked like --source (an unchanged value passes on)."""
    return typer.Option(default, help=help, callback=_source)


def out_option(default: Path | None, help: str = "Output directory.") -> typer.models.OptionInfo:
    return typer.Option(default, help=help, callback=_out)


def out_file_option(default: Path, help: str) -> typer.models.OptionInfo:
    return typer.Option(default, help=help, callback=_out_file)


def resolve_layer(model: str, layer: int | None, hook: str | None) -> int | None:
    """The block to read: as given; else the toy's (2) for the toy, the default suite's (8) for
    pythia-160m-deduped; other models must name a --layer or --hook."""
    from saelens_amort.toy.paths import TOY_LAYER

    if layer is not None or hook:
        return layer
    if model == "toy":
        return TOY_LAYER
    from saelens_amort.layers import SUITE_LAYER, SUITE_MODEL  # torch-free (saes.suites is under saes: torch)

    if Path(model).name == SUITE_MODEL:
        return SUITE_LAYER
    raise SaeAmortError(f"--model {model}: give --layer L (for blocks.L.hook_resid_post) or --hook NAME")
