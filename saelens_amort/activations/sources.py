"""Text sources for activation collection: the toy corpus, local files, and Hugging Face datasets.

A source is a deterministic stream of `(text, label)` documents (label -1 when unlabelled) with a stable `name`
that goes into the activation cache key. Document indices (the `doc_ids` of an activation store) count the
documents of this stream: lines with text for `.txt`, non-blank lines for `.jsonl`, rows for `.parquet` and for
Hugging Face datasets (so a doc id is the row number in the file, and can be joined back to it).

Spec syntax (`resolve_source`; `saelens_amort.source_spec` parses and checks it, torch-free, for the CLI too):

- `toy`, `toy:news`, `toy:code`: the embedded toy corpus (all domains, or one), endless, seeded.
- `PATH.txt` (one document per non-empty line), `PATH.jsonl` (field `text`, optional integer `label`),
  `PATH.parquet` (column `text`, optional integer column `label`; read in row-group batches).
- `hf:NAME[:CONFIG][@SPLIT]`: `datasets.load_dataset(NAME, CONFIG, split=SPLIT or "train", streaming=True)`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from saelens_amort.errors import SaeAmortError
from saelens_amort.source_spec import FileSpec, ToySpec, check_file, check_source, check_toy_domain

UNLABELLED = -1
_PARQUET_BATCH_ROWS = 1024


@runtime_checkable
class TextSource(Protocol):
    """A deterministic stream of documents."""

    name: str
    """Stable identity of the stream (part of the activation cache key)."""
    label_names: tuple[str, ...] | None
    """Names of the integer labels, when known."""

    def iter_documents(self) -> Iterator[tuple[str, int]]:
        """`(text, label)` pairs, in the same order every time; label is -1 when the document has none."""
        ...


@dataclass(frozen=True)
class ToySource:
    """The embedded toy corpus (`saelens_amort.toy.corpus`), endless and deterministic per seed."""

    domain: str | None
    """One of the toy DOMAINS, or None for all of them."""
    seed: int = 0
    """Corpus seed."""
    name: str = field(init=False)
    label_names: tuple[str, ...] | None = field(init=False)

    def __post_init__(self) -> None:
        from saelens_amort.toy import corpus

        check_toy_domain(self.domain)
        # A digest of the first documents makes a changed generator a cache miss, not a stale hit.
        head = "\x00".join(text for text, _ in itertools.islice(self.iter_documents(), 4))
        digest = hashlib.sha256(head.encode()).hexdigest()[:12]
        object.__setattr__(self, "name", f"toy:{self.domain or 'all'}:seed={self.seed}:head={digest}")
        object.__setattr__(self, "label_names", tuple(corpus.LABEL_NAMES))

    def iter_documents(self) -> Iterator[tuple[str, int]]:
        from saelens_amort.toy.corpus import iter_corpus

        for doc in iter_corpus(None, seed=self.seed):
            if self.domain is None or doc.domain == self.domain:
                yield doc.text, int(doc.label)


def _label(value: Any, where: str) -> int:
    if value is None:
        return UNLABELLED
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise SaeAmortError(f"{where}: label {value!r} is not an integer; map labels to integers or drop the column")


@dataclass(frozen=True)
class FileSource:
    """A local `.txt`, `.jsonl` or `.parquet` file."""

    path: Path
    """Absolute path of the file."""
    text_column: str = "text"
    """Field / column holding the document text (jsonl, parquet)."""
    label_column: str = "label"
    """Optional field / column holding an integer label (jsonl, parquet)."""
    name: str = field(init=False)
    label_names: tuple[str, ...] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        st = check_file(self.path)  # known extension, exists, is a file
        suffix = self.path.suffix.lower()
        # Size and mtime make an edited file a cache miss.
        name = f"file:{self.path}:size={st.st_size}:mtime_ns={st.st_mtime_ns}"
        if suffix != ".txt":
            name += f":text={self.text_column}:label={self.label_column}"
        object.__setattr__(self, "name", name)
        _CHECKERS.get(suffix, lambda s: None)(self)

    def iter_documents(self) -> Iterator[tuple[str, int]]:
        return _FILE_READERS[self.path.suffix.lower()](self)


def _iter_txt(src: FileSource) -> Iterator[tuple[str, int]]:
    with open(src.path, encoding="utf-8", errors="replace") as f:
        for line in f:
            text = line.rstrip("\r\n")
            if text.strip():
                yield text, UNLABELLED


def _jsonl_records(src: FileSource) -> Iterator[tuple[int, dict]]:
    with open(src.path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise SaeAmortError(
                    f"{src.path}:{lineno} is not valid JSON ({e.msg}); fix or remove that line"
                ) from None
            if not isinstance(record, dict):
                raise SaeAmortError(f"{src.path}:{lineno} is not a JSON object; each line must be {{\"text\": ...}}")
            yield lineno, record


def _check_jsonl(src: FileSource) -> None:
    for lineno, record in _jsonl_records(src):
        if src.text_column not in record:
            raise SaeAmortError(
                f"{src.path}:{lineno} has no field {src.text_column!r} (fields: {sorted(record)}); "
                "pass the right text column"
            )
        return


def _iter_jsonl(src: FileSource) -> Iterator[tuple[str, int]]:
    for lineno, record in _jsonl_records(src):
        if src.text_column not in record:
            raise SaeAmortError(f"{src.path}:{lineno} has no field {src.text_column!r}; every line needs it")
        text = record[src.text_column]
        yield ("" if text is None else str(text)), _label(record.get(src.label_column), f"{src.path}:{lineno}")


def _parquet_file(src: FileSource):  # -> pyarrow.parquet.ParquetFile
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(src.path)
    except Exception as e:  # pyarrow raises several types for a non-parquet file
        raise SaeAmortError(f"cannot read {src.path} as parquet ({e}); give a valid parquet file") from None


def _check_parquet(src: FileSource) -> None:
    columns = _parquet_file(src).schema_arrow.names
    if src.text_column not in columns:
        raise SaeAmortError(f"{src.path} has no column {src.text_column!r} (columns: {columns}); "
                            "pass the right text column")


def _iter_parquet(src: FileSource) -> Iterator[tuple[str, int]]:
    pf = _parquet_file(src)
    has_label = src.label_column in pf.schema_arrow.names
    columns = [src.text_column] + ([src.label_column] if has_label else [])
    for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
        texts = batch.column(0).to_pylist()
        labels = batch.column(1).to_pylist() if has_label else [None] * len(texts)
        for text, label in zip(texts, labels):
            yield ("" if text is None else str(text)), _label(label, str(src.path))


_FILE_READERS: dict[str, Callable[[FileSource], Iterator[tuple[str, int]]]] = {
    ".txt": _iter_txt,
    ".jsonl": _iter_jsonl,
    ".parquet": _iter_parquet,
}
_CHECKERS: dict[str, Callable[[FileSource], None]] = {".jsonl": _check_jsonl, ".parquet": _check_parquet}


def _hf_offline() -> bool:
    return any(
        os.environ.get(var, "0").lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


@dataclass(frozen=True)
class HFSource:
    """A Hugging Face dataset split, streamed (or read from the local cache when offline)."""

    dataset: str
    """Dataset name on the hub (or a local dataset directory)."""
    config: str | None = None
    """Dataset configuration, if any."""
    split: str = "train"
    """Split to read."""
    text_column: str = "text"
    """Column holding the document text."""
    label_column: str = "label"
    """Optional column holding an integer label."""
    name: str = field(init=False)
    label_names: tuple[str, ...] | None = field(init=False, default=None)
    _data: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        data = self._load()
        features = getattr(data, "features", None)
        if features is not None:
            if self.text_column not in features:
                raise SaeAmortError(f"dataset {self.dataset} has no column {self.text_column!r} "
                                    f"(columns: {list(features)}); pass the right text column")
            names = getattr(features.get(self.label_column), "names", None)
            object.__setattr__(self, "label_names", tuple(names) if names else None)
        object.__setattr__(self, "_data", data)
        object.__setattr__(
            self, "name",
            f"hf:{self.dataset}:{self.config or ''}@{self.split}:text={self.text_column}:label={self.label_column}",
        )

    def _load(self) -> Any:
        import datasets

        spec = f"hf:{self.dataset}{':' + self.config if self.config else ''}@{self.split}"
        try:
            return datasets.load_dataset(self.dataset, self.config, split=self.split, streaming=True)
        except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError ...)
            first_error = e
        if _hf_offline():  # streaming needs the hub; a dataset already in the local cache still loads non-streaming
            try:
                return datasets.load_dataset(self.dataset, self.config, split=self.split)
            except Exception:
                raise SaeAmortError(
                    f"{spec} is not in the local Hugging Face cache and the hub is offline; use a local "
                    ".txt/.jsonl/.parquet file, or `toy`"
                ) from None
        raise SaeAmortError(
            f"cannot load {spec} ({type(first_error).__name__}: {str(first_error).splitlines()[0][:200]}); "
            "check the name/config/split, or use a local .txt/.jsonl/.parquet file, or `toy`"
        ) from None

    def iter_documents(self) -> Iterator[tuple[str, int]]:
        for i, row in enumerate(self._data):
            if self.text_column not in row:
                raise SaeAmortError(f"row {i} of {self.dataset} has no column {self.text_column!r}")
            text = row[self.text_column]
            yield ("" if text is None else str(text)), _label(row.get(self.label_column), f"{self.dataset} row {i}")


def resolve_source(
    spec: str, *, seed: int = 0, text_column: str = "text", label_column: str = "label"
) -> TextSource:
    """The source for `spec` (see the module docstring for the syntax); `seed` only affects the toy corpus."""
    parsed = check_source(spec)  # spelling, shape and file existence: the same check the CLI's --source runs
    if isinstance(parsed, ToySpec):
        return ToySource(parsed.domain, seed)
    if isinstance(parsed, FileSpec):
        return FileSource(parsed.path, text_column=text_column, label_column=label_column)
    return HFSource(parsed.dataset, parsed.config, parsed.split, text_column=text_column, label_column=label_column)
