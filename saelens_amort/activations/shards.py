"""The on-disk format of an activation store, and its atomic, resumable writer.

A store directory holds:

- `shard_{i:05d}.safetensors`: tensors `acts [n, d_in]` (storage dtype), `token_ids`, `doc_ids`, `positions`,
  `labels` (`[n]` int64), aligned row by row. Each is written to a temporary name, fsynced, then renamed.
- `manifest.json`: the completed shards (file, n_rows, n_bytes, sha256) and where to resume; rewritten atomically
  after every shard, so it never lists a shard that is not fully on disk.
- `meta.json`: the request (the cache key's content), model, hook, d_in, dtype, library versions, creation time,
  and `complete` (set last: the commit point of the whole store).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from safetensors.torch import save_file
from torch import Tensor

from saelens_amort.atomic import readable_file_mode
from saelens_amort.devices import STORAGE_DTYPES

FORMAT_VERSION = 1
META_FILE = "meta.json"
MANIFEST_FILE = "manifest.json"
SHARD_KEYS = ("acts", "token_ids", "doc_ids", "positions", "labels")
TORCH_STORAGE_DTYPES = {name: getattr(torch, name) for name in STORAGE_DTYPES}
"""The storage dtype names (checked torch-free by `devices.parse_storage_dtype`) → torch dtypes."""
_TMP_MARK = ".tmp-"


class ActivationBatch(NamedTuple):
    """Activation rows with, aligned per row, the token, its document, its position and the document's label."""

    acts: Float[Tensor, "n d_in"]
    token_ids: Int[Tensor, " n"]
    doc_ids: Int[Tensor, " n"]
    """Index of the document in the source stream."""
    positions: Int[Tensor, " n"]
    """Position in the model's input sequence, BOS included (so the first text token of a chunk is 1)."""
    labels: Int[Tensor, " n"]
    """Label of the document (-1 when unlabelled)."""

    @property
    def n_rows(self) -> int:
        return int(self.token_ids.shape[0])

    def rows(self, start: int, stop: int | None = None) -> ActivationBatch:
        return ActivationBatch(*(t[start:stop] for t in self))


def cat_batches(batches: list[ActivationBatch]) -> ActivationBatch:
    if len(batches) == 1:
        return batches[0]
    return ActivationBatch(*(torch.cat(parts) for parts in zip(*batches)))


def tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}")


def is_tmp(path: Path) -> bool:
    return path.name.startswith(".") and _TMP_MARK in path.name


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not supported on every platform / filesystem
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _commit(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, readable_file_mode())  # safetensors creates its files 0600 whatever the umask
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    tmp = tmp_name(path)
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    _commit(tmp, path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def write_shard(directory: Path, index: int, batch: ActivationBatch) -> dict[str, Any]:
    """Write one shard atomically and return its manifest record."""
    path = directory / shard_name(index)
    tmp = tmp_name(path)
    tensors = {key: t.contiguous() for key, t in zip(SHARD_KEYS, batch)}
    save_file(tensors, str(tmp), metadata={"format": str(FORMAT_VERSION)})
    _commit(tmp, path)
    return {"file": path.name, "n_rows": batch.n_rows, "n_bytes": path.stat().st_size, "sha256": sha256_file(path)}


class ResumePoint(NamedTuple):
    """Where collection continues: the batch starting at chunk `chunk` of document `doc`, minus rows already saved."""

    doc: int
    chunk: int
    skip_rows: int


class ShardWriter:
    """Buffers activation rows and writes a shard (then the manifest) whenever `shard_tokens` rows are pending.

    Holds at most one shard plus one batch of rows in memory.
    """

    def __init__(self, directory: Path, shard_tokens: int, manifest: dict[str, Any] | None = None) -> None:
        self.directory = directory
        self.shard_tokens = shard_tokens
        self.shards: list[dict[str, Any]] = list(manifest["shards"]) if manifest else []
        self.rows_saved = sum(s["n_rows"] for s in self.shards)
        self._pending: list[ActivationBatch] = []
        self._n_pending = 0
        self._batch_start = ResumePoint(0, 0, 0)
        self._batch_rows_added = 0

    @property
    def rows_total(self) -> int:
        return self.rows_saved + self._n_pending

    def start_batch(self, doc: int, chunk: int, skipped_rows: int = 0) -> None:
        """Rows added next belong to the batch starting at (doc, chunk); its first `skipped_rows` are already saved."""
        self._batch_start = ResumePoint(doc, chunk, 0)
        self._batch_rows_added = skipped_rows

    def add(self, rows: ActivationBatch) -> None:
        self._pending.append(rows)
        self._n_pending += rows.n_rows
        self._batch_rows_added += rows.n_rows
        while self._n_pending >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def finish(self) -> None:
        if self._n_pending:
            self._flush(self._n_pending)

    def _flush(self, n: int) -> None:
        pending = cat_batches(self._pending)
        shard, rest = pending.rows(0, n), pending.rows(n)
        self.shards.append(write_shard(self.directory, len(self.shards), shard))
        self.rows_saved += n
        self._n_pending -= n
        # Copy the remainder so the concatenated shard's memory is released.
        self._pending = [ActivationBatch(*(t.clone() for t in rest))] if self._n_pending else []
        # Rows of the current batch that are now in shards: everything added so far minus what is still pending.
        saved_of_batch = self._batch_rows_added - self._n_pending
        self.write_manifest(ResumePoint(self._batch_start.doc, self._batch_start.chunk, saved_of_batch), False)

    def write_manifest(self, resume: ResumePoint | None, complete: bool) -> None:
        atomic_write_json(
            self.directory / MANIFEST_FILE,
            {
                "format": FORMAT_VERSION,
                "shards": self.shards,
                "rows": self.rows_saved,
                "docs_consumed": resume.doc if resume else None,
                "resume": resume._asdict() if resume else None,
                "complete": complete,
            },
        )
