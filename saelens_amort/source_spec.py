"""Text-source specs checked for spelling and shape, without torch, pandas or reading any file.

`check_source(spec)` parses a source spec into a `ToySpec`, `FileSpec` or `HFSpec`, or raises the one
`SaeAmortError` the source would raise; `activations.sources.resolve_source` builds its sources from what this
returns, so the CLI's `--source` callbacks and the resolver share one parser and one set of messages. What needs a
file's contents (a `.jsonl` without `text`, a file that is not parquet) or the hub (an unknown dataset) is checked
by the sources themselves.

Spec syntax:

- `toy`, `toy:news`, `toy:code`: the embedded toy corpus (all domains, or one).
- `PATH.txt`, `PATH.jsonl`, `PATH.parquet`: an existing local file (`~` expanded, relative to the working folder).
- `hf:NAME[:CONFIG][@SPLIT]`: a Hugging Face dataset (split `train` unless given).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from saelens_amort.errors import SaeAmortError

FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")
"""File extensions a local source may have (lowercase; `activations.sources` has one reader for each)."""


@dataclass(frozen=True)
class ToySpec:
    """The toy corpus: all of it, or one domain."""

    domain: str | None
    """One of `toy.corpus.DOMAINS`, or None for all of them."""


@dataclass(frozen=True)
class FileSpec:
    """A local file with a known extension that exists now."""

    path: Path
    """Absolute path of the file."""


@dataclass(frozen=True)
class HFSpec:
    """A Hugging Face dataset split."""

    dataset: str
    """Dataset name on the hub (or a local dataset directory)."""
    config: str | None
    """Dataset configuration, if any."""
    split: str
    """Split to read."""


SourceSpec = ToySpec | FileSpec | HFSpec


def check_toy_domain(domain: str | None) -> None:
    """Raise unless `domain` is None or one of the toy corpus's domains."""
    from saelens_amort.toy.corpus import DOMAINS  # torch-free word lists

    if domain is not None and domain not in DOMAINS:
        raise SaeAmortError(f"unknown toy domain {domain!r}; use one of: toy, " + ", ".join(
            f"toy:{d}" for d in DOMAINS))


def check_file(path: Path) -> os.stat_result:
    """The stat of `path` if it is an existing file with a known extension, else SaeAmortError."""
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise SaeAmortError(
            f"cannot read {path}: unknown extension {suffix or '(none)'!r}; use .txt, .jsonl or .parquet"
        )
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SaeAmortError(f"source file {path} does not exist; give an existing .txt/.jsonl/.parquet "
                            "file, or `toy`") from None
    if not path.is_file():
        raise SaeAmortError(f"source {path} is not a file; give a .txt/.jsonl/.parquet file, or `toy`")
    return st


def _parse_hf(body: str) -> HFSpec:
    body, _, split = body.partition("@")
    dataset, _, config = body.partition(":")
    if not dataset:
        raise SaeAmortError("hf: source needs a dataset name, e.g. hf:NAME[:CONFIG][@SPLIT]")
    return HFSpec(dataset, config or None, split or "train")


def check_source(spec: str) -> SourceSpec:
    """What `spec` names (see the module docstring for the syntax), or the SaeAmortError it would raise."""
    spec = spec.strip()
    if spec == "toy":
        return ToySpec(None)
    if spec.startswith("toy:"):
        check_toy_domain(spec[4:])
        return ToySpec(spec[4:])
    if spec.startswith("hf:"):
        return _parse_hf(spec[3:])
    path = Path(spec).expanduser().resolve()
    if not path.exists() and path.suffix.lower() not in FILE_SUFFIXES:
        raise SaeAmortError(
            f"unknown source {spec!r}; use toy, toy:news, toy:code, a .txt/.jsonl/.parquet file, "
            "or hf:NAME[:CONFIG][@SPLIT]"
        )
    check_file(path)
    return FileSpec(path)
