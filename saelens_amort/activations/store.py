"""Reading an activation store: validated on open, streamed shard by shard, corruption reported by file.

Each shard's bytes are checked against the manifest's sha256 the first time this process reads it (the check hashes
the bytes that are parsed anyway, so it costs one pass of hashing); a file changed since is checked again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file

from saelens_amort.activations.shards import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    META_FILE,
    SHARD_KEYS,
    ActivationBatch,
    cat_batches,
    sha256_file,
)
from saelens_amort.errors import SaeAmortError

__all__ = ["ActivationBatch", "ActivationStore"]

_VERIFIED: set[tuple[str, str, int, int]] = set()
"""(file, sha256, size, mtime_ns) of the shards this process has checked."""


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SaeAmortError(f"{path.parent} is not an activation store (no {path.name}); run `saeamort collect` "
                            "to create one") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SaeAmortError(f"{what} {path} is unreadable ({e}); delete {path.parent} and collect again") from None
    if not isinstance(data, dict):
        raise SaeAmortError(f"{what} {path} is malformed; delete {path.parent} and collect again")
    return data


class ActivationStore:
    """A complete activation store on disk. Use `ActivationStore.open(path)`; nothing is loaded until asked."""

    def __init__(self, path: Path, meta: dict[str, Any], manifest: dict[str, Any]) -> None:
        self.path = path
        self.meta = meta
        self._shards: list[dict[str, Any]] = manifest["shards"]

    @classmethod
    def open(cls, path: Path | str) -> ActivationStore:
        """Open and validate a store (meta, manifest, shard files present with the recorded sizes)."""
        path = Path(path)
        meta = read_json(path / META_FILE, "store metadata")
        if meta.get("format") != FORMAT_VERSION:
            raise SaeAmortError(f"activation store {path} has format {meta.get('format')!r}, this version reads "
                                f"{FORMAT_VERSION}; delete it and collect again")
        if not meta.get("complete"):
            raise SaeAmortError(f"activation store {path} is incomplete (collection was interrupted); rerun collect "
                                "with the same arguments to resume it")
        manifest = read_json(path / MANIFEST_FILE, "store manifest")
        shards = manifest.get("shards")
        if not isinstance(shards, list) or not manifest.get("complete"):
            raise SaeAmortError(f"store manifest {path / MANIFEST_FILE} is malformed or incomplete; delete {path} "
                                "and collect again")
        n_rows = sum(int(s["n_rows"]) for s in shards)
        if n_rows != meta.get("n_tokens"):
            raise SaeAmortError(f"activation store {path} lists {n_rows} rows but its metadata says "
                                f"{meta.get('n_tokens')}; delete it and collect again")
        for record in shards:
            _check_size(path / record["file"], record)
        return cls(path, meta, manifest)

    @property
    def n_tokens(self) -> int:
        return int(self.meta["n_tokens"])

    @property
    def d_in(self) -> int:
        return int(self.meta["d_in"])

    @property
    def hook_name(self) -> str:
        return str(self.meta["hook_name"])

    @property
    def model_name(self) -> str:
        return str(self.meta["model_name"])

    @property
    def dtype(self) -> torch.dtype:
        """Storage dtype of the activations."""
        return getattr(torch, self.meta["dtype"])

    @property
    def label_names(self) -> tuple[str, ...] | None:
        names = self.meta.get("label_names")
        return tuple(names) if names else None

    @property
    def shard_files(self) -> list[Path]:
        return [self.path / s["file"] for s in self._shards]

    def __repr__(self) -> str:
        return (f"ActivationStore({str(self.path)!r}, model={self.model_name!r}, hook={self.hook_name!r}, "
                f"n_tokens={self.n_tokens}, d_in={self.d_in}, dtype={self.meta['dtype']})")

    def _read_shard(self, record: dict[str, Any]) -> ActivationBatch:
        file = self.path / record["file"]
        _check_size(file, record)
        try:
            tensors = _load_verified(file, record)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise _corrupt(file, f"cannot be parsed ({str(e).splitlines()[0][:120]})") from None
        missing = [k for k in SHARD_KEYS if k not in tensors]
        if missing:
            raise _corrupt(file, f"lacks tensors {missing}")
        batch = ActivationBatch(*(tensors[k] for k in SHARD_KEYS))
        n = int(record["n_rows"])
        if any(t.shape[0] != n for t in batch) or batch.acts.shape[1:] != (self.d_in,):
            raise _corrupt(file, f"holds {[tuple(t.shape) for t in batch]}, expected {n} rows of d_in={self.d_in}")
        return batch

    def iter_shards(self) -> Iterator[ActivationBatch]:
        """Each shard in order, acts in the storage dtype (one shard in memory at a time)."""
        for record in self._shards:
            yield self._read_shard(record)

    def iter_batches(self, batch_size: int, *, dtype: torch.dtype = torch.float32) -> Iterator[ActivationBatch]:
        """Consecutive batches of `batch_size` rows across shard boundaries (the last may be short); acts as `dtype`."""
        if batch_size <= 0:
            raise SaeAmortError(f"batch size must be positive, got {batch_size}")
        carry: ActivationBatch | None = None
        for shard in self.iter_shards():
            rows = cat_batches([carry, shard]) if carry is not None else shard
            start = 0
            while rows.n_rows - start >= batch_size:
                yield _as_dtype(rows.rows(start, start + batch_size), dtype)
                start += batch_size
            carry = rows.rows(start) if start < rows.n_rows else None
        if carry is not None:
            yield _as_dtype(carry, dtype)

    def load(self, n: int | None = None, *, dtype: torch.dtype = torch.float32) -> ActivationBatch:
        """The first `n` rows (all when None) in memory, acts as `dtype`. For small stores and slices."""
        n = self.n_tokens if n is None else n
        if not 0 <= n <= self.n_tokens:
            raise SaeAmortError(f"cannot load {n} rows: store {self.path} holds {self.n_tokens}")
        parts: list[ActivationBatch] = []
        have = 0
        for shard in self.iter_shards():
            if have >= n:
                break
            parts.append(shard.rows(0, n - have))
            have += parts[-1].n_rows
        if not parts:
            return _as_dtype(self._empty(), dtype)
        return _as_dtype(cat_batches(parts), dtype)

    def verify(self) -> None:
        """Check every shard's sha256 against the manifest (slow: reads every byte); raises on a mismatch."""
        for record in self._shards:
            file = self.path / record["file"]
            _check_size(file, record)
            if record.get("sha256") and sha256_file(file) != record["sha256"]:
                raise _corrupt(file, "does not match its recorded sha256")

    def _empty(self) -> ActivationBatch:
        ints = torch.zeros(0, dtype=torch.int64)
        return ActivationBatch(torch.zeros(0, self.d_in, dtype=self.dtype), ints, ints, ints, ints)


def _as_dtype(batch: ActivationBatch, dtype: torch.dtype) -> ActivationBatch:
    return batch._replace(acts=batch.acts.to(dtype))


def _corrupt(file: Path, why: str) -> SaeAmortError:
    return SaeAmortError(f"activation shard {file} {why}: it is corrupt; delete the store {file.parent} and "
                         "collect again")


def _load_verified(file: Path, record: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The shard's tensors; its bytes are checked against the recorded sha256 on this process's first read."""
    st = file.stat()
    key = (str(file.resolve()), str(record.get("sha256")), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED or not record.get("sha256"):
        return load_file(str(file))
    data = file.read_bytes()
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise _corrupt(file, "does not match its recorded sha256")
    _VERIFIED.add(key)
    return load(data)


def _check_size(file: Path, record: dict[str, Any]) -> None:
    try:
        size = file.stat().st_size
    except FileNotFoundError:
        raise _corrupt(file, "is missing") from None
    if size != record["n_bytes"]:
        raise _corrupt(file, f"has {size} bytes, the manifest says {record['n_bytes']}")
