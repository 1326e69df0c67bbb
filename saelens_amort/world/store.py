"""A world on disk: an ordinary activation store plus its ground truth.

A world directory is an activation store (`meta.json`, `manifest.json`, `shard_*.safetensors`: every command that
reads activations runs on it) with, beside it:

- `world.json`: the WorldConfig, the truth files with their sha256, and the format version;
- `truth.safetensors`: `atoms [n_features, d]`, `probs`, `parent`, `group` (see `WorldStructure`);
- `truth_{i:05d}.safetensors`: the true codes of shard i as CSR (`indptr [n+1]`, `indices`, `values`).

The whole directory is built under a temporary name beside `out` and renamed at the end, so an interrupted build
leaves nothing that looks like a world.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from saelens_amort.activations.shards import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    META_FILE,
    ActivationBatch,
    atomic_write_json,
    sha256_file,
    write_shard,
)
from saelens_amort.activations.store import ActivationStore
from saelens_amort.atomic import write_dir_atomic
from saelens_amort.errors import SaeAmortError
from saelens_amort.provenance import provenance
from saelens_amort.world.config import WorldConfig
from saelens_amort.world.generate import WorldStructure, draw_chunk, draw_structure

WORLD_FILE = "world.json"
TRUTH_FILE = "truth.safetensors"
WORLD_FORMAT = 1
HOOK_NAME = "world.hook_x"
"""The hook name a world's store records (SAEs trained on it carry it; no model has it)."""
SEQ_LEN = 128
"""Rows are grouped into pseudo-documents of this many rows (for the probe split by document)."""


def build_world(cfg: WorldConfig, out: Path | str, *, overwrite: bool = False) -> World:
    """Draw `cfg` into `out` (a complete world of the same config is reused as it is)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SaeAmortError(f"--out {out} is a file; choose a directory")
    if out.exists() and any(out.iterdir()):
        try:
            world = World.open(out)
        except SaeAmortError:
            world = None
        if world is not None and world.config == cfg:
            return world
        if not overwrite:
            raise SaeAmortError(f"{out} already holds something else (not this world); use another --out or "
                                "pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_dir_atomic(out, lambda tmp: _write(cfg, tmp))
    return World.open(out)


def _write(cfg: WorldConfig, directory: Path) -> None:
    structure = draw_structure(cfg)
    save_file({k: v.contiguous() for k, v in structure._asdict().items()}, str(directory / TRUTH_FILE))
    shards, truths = [], []
    for i, start in enumerate(range(0, cfg.n_tokens, cfg.shard_tokens)):
        n = min(cfg.shard_tokens, cfg.n_tokens - start)
        chunk = draw_chunk(cfg, structure, i, n)
        rows = torch.arange(start, start + n)
        batch = ActivationBatch(chunk.x, torch.zeros(n, dtype=torch.long), rows // SEQ_LEN, rows % SEQ_LEN + 1,
                                torch.full((n,), -1, dtype=torch.long))
        shards.append(write_shard(directory, i, batch))
        rows_nz, cols_nz = torch.nonzero(chunk.codes, as_tuple=True)  # row-major
        indptr = torch.zeros(n + 1, dtype=torch.long)
        indptr[1:] = torch.bincount(rows_nz, minlength=n).cumsum(0)
        name = f"truth_{i:05d}.safetensors"
        save_file({"indptr": indptr, "indices": cols_nz, "values": chunk.codes[rows_nz, cols_nz].contiguous()},
                  str(directory / name))
        truths.append({"file": name, "n_rows": n, "sha256": sha256_file(directory / name)})
    atomic_write_json(directory / MANIFEST_FILE, {"format": FORMAT_VERSION, "shards": shards, "rows": cfg.n_tokens,
                                                  "docs_consumed": None, "resume": None, "complete": True})
    atomic_write_json(directory / WORLD_FILE, {"format": WORLD_FORMAT, "config": cfg.as_json(), "truth": truths,
                                               "truth_sha256": sha256_file(directory / TRUTH_FILE)})
    atomic_write_json(directory / META_FILE, {
        "format": FORMAT_VERSION, "request": {"world": cfg.as_json()}, "model_name": "world", "hook_name": HOOK_NAME,
        "d_in": cfg.d, "dtype": "float32", "n_tokens": cfg.n_tokens, "n_tokens_requested": cfg.n_tokens,
        "source": "world", "label_names": None, "provenance": provenance(), "complete": True,
    })


class World:
    """A built world: its activation store, its structure, and its true codes aligned with the store's rows."""

    def __init__(self, path: Path, config: WorldConfig, structure: WorldStructure, truth: list[dict]) -> None:
        self.path = path
        self.config = config
        self.structure = structure
        self._truth = truth
        self.store = ActivationStore.open(path)

    @classmethod
    def open(cls, path: Path | str) -> World:
        path = Path(path)
        spec = path / WORLD_FILE
        if not spec.exists():
            raise SaeAmortError(f"{path} has no ground truth ({WORLD_FILE} missing): truth metrics need a world "
                                "built by `saeamort world build`")
        try:
            info = json.loads(spec.read_text())
            config = WorldConfig.from_json(info["config"])
            truth = list(info["truth"])
            tensors = load_file(str(path / TRUTH_FILE))
            structure = WorldStructure(*(tensors[k] for k in WorldStructure._fields))
        except (OSError, KeyError, TypeError, ValueError, SafetensorError) as e:
            raise SaeAmortError(f"world {path} is unreadable ({type(e).__name__}: {e}); build it again") from None
        if info.get("format") != WORLD_FORMAT:
            raise SaeAmortError(f"world {path} has format {info.get('format')!r}; this version reads {WORLD_FORMAT}")
        if sha256_file(path / TRUTH_FILE) != info.get("truth_sha256"):
            raise SaeAmortError(f"world {path}: {TRUTH_FILE} does not match its recorded sha256; build it again")
        if tuple(structure.atoms.shape) != (config.n_features, config.d):
            raise SaeAmortError(f"world {path}: atoms have shape {tuple(structure.atoms.shape)}, the config says "
                                f"({config.n_features}, {config.d}); build it again")
        world = cls(path, config, structure, truth)
        if world.store.n_tokens != sum(int(t["n_rows"]) for t in truth):
            raise SaeAmortError(f"world {path}: truth and activations disagree on the number of rows; build it again")
        return world

    @property
    def n_features(self) -> int:
        return self.config.n_features

    def _read_truth(self, record: dict) -> Tensor:
        file = self.path / record["file"]
        try:
            t = load_file(str(file))
            n = int(record["n_rows"])
            indptr, indices, values = t["indptr"], t["indices"], t["values"]
            if indptr.shape != (n + 1,) or indices.shape != values.shape or int(indptr[-1]) != values.numel():
                raise ValueError("CSR arrays do not fit together")
            rows = torch.repeat_interleave(torch.arange(n), torch.diff(indptr))
            codes = torch.zeros(n, self.n_features)
            codes[rows, indices] = values
            return codes
        except (OSError, KeyError, RuntimeError, ValueError, IndexError, SafetensorError) as e:
            raise SaeAmortError(f"world truth file {file} is unreadable ({e}); build the world again") from None

    def iter_truth(self, batch_size: int) -> Iterator[Tensor]:
        """True codes [batch, n_features] (dense fp32) in the same batches as `store.iter_batches(batch_size)`."""
        if batch_size <= 0:
            raise SaeAmortError(f"batch size must be positive, got {batch_size}")
        carry: Tensor | None = None
        for record in self._truth:
            rows = self._read_truth(record)
            rows = torch.cat([carry, rows]) if carry is not None else rows
            start = 0
            while rows.shape[0] - start >= batch_size:
                yield rows[start:start + batch_size]
                start += batch_size
            carry = rows[start:] if start < rows.shape[0] else None
        if carry is not None:
            yield carry

    def truth(self, n: int | None = None) -> Tensor:
        """The first `n` rows' true codes (all when None), dense."""
        n = self.store.n_tokens if n is None else n
        parts, have = [], 0
        for codes in self.iter_truth(max(1, min(n, self.config.shard_tokens))):
            if have >= n:
                break
            parts.append(codes[: n - have])
            have += parts[-1].shape[0]
        return torch.cat(parts) if parts else torch.zeros(0, self.n_features)
