"""Collect one hook's activations from a TransformerLens model into a cached, resumable shard store.

Each document is tokenized on its own and split into chunks of `context_size - 1` tokens, each given a BOS; a batch
of chunks is right-padded and run up to the hook only (TransformerLens' `stop_at_layer`, and the capturing hook ends
the forward pass as soon as it fires). Rows for BOS and padding are dropped. With causal attention, right padding
leaves every real position exact; an explicit attention mask is passed anyway (it costs nothing measurable and keeps
tokenizers that pad on the left from confusing TransformerLens' own mask).

Batches are fixed groups of `batch_size` consecutive chunks, so a resumed run repeats exactly the batches of an
uninterrupted one and its rows are bit-identical.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from safetensors import safe_open
from torch import Tensor
from transformer_lens import HookedTransformer

from saelens_amort.activations.progress import token_progress
from saelens_amort.activations.shards import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    META_FILE,
    TORCH_STORAGE_DTYPES,
    ActivationBatch,
    ResumePoint,
    ShardWriter,
    atomic_write_json,
)
from saelens_amort.activations.sources import TextSource
from saelens_amort.activations.store import ActivationStore
from saelens_amort.activations.store_dir import Claim, claim_store_dir
from saelens_amort.devices import parse_storage_dtype
from saelens_amort.errors import SaeAmortError
from saelens_amort.provenance import provenance

logger = logging.getLogger(__name__)

_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")
_NOT_PER_TOKEN = ("hook_pattern", "hook_attn_scores")


@dataclass(frozen=True)
class CollectConfig:
    hook_name: str
    """TransformerLens hook to read, e.g. blocks.8.hook_resid_post."""
    n_tokens: int
    """Activation rows to collect (BOS and padding excluded)."""
    context_size: int = 128
    """Tokens per sequence, BOS included; longer documents are split into several sequences."""
    batch_size: int = 16
    """Sequences per forward pass."""
    shard_tokens: int = 65536
    """Activation rows per shard file."""
    dtype: str = "float32"
    """Storage dtype: float32, float16 or bfloat16."""
    seed: int = 0
    """Seed (recorded in the cache key; the source's own seed decides the toy stream)."""
    prepend_bos: bool = True
    """Start every sequence with the BOS token (whose row is not kept)."""

    def __post_init__(self) -> None:
        if self.n_tokens <= 0:
            raise SaeAmortError(f"n_tokens must be positive, got {self.n_tokens}")
        for name in ("context_size", "batch_size", "shard_tokens"):
            if getattr(self, name) <= 0:
                raise SaeAmortError(f"{name} must be positive, got {getattr(self, name)}")
        if self.prepend_bos and self.context_size < 2:
            raise SaeAmortError("context_size must be at least 2 when a BOS token is prepended")
        parse_storage_dtype(self.dtype)


def hook_layer(hook_name: str) -> int | None:
    """The block index of a hook name (`blocks.8.hook_resid_post` -> 8), None for hooks outside the blocks."""
    match = _LAYER_RE.match(hook_name)
    return int(match.group(1)) if match else None


def default_cache_dir() -> Path:
    """`$SAEAMORT_CACHE`, else `~/.cache/saelens_amort`."""
    env = os.environ.get("SAEAMORT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "saelens_amort"


def check_hook(model: HookedTransformer, hook_name: str) -> None:
    """Raise a SaeAmortError naming the valid range or close names when the model has no such hook."""
    layer = hook_layer(hook_name)
    n_layers = model.cfg.n_layers
    if layer is not None and layer >= n_layers:
        raise SaeAmortError(f"hook {hook_name!r} is in layer {layer}, but the model has layers 0..{n_layers - 1}")
    if hook_name not in model.hook_dict:
        close = difflib.get_close_matches(hook_name, list(model.hook_dict), n=5, cutoff=0.6)
        hint = f"close names: {', '.join(close)}" if close else "e.g. blocks.0.hook_resid_post"
        raise SaeAmortError(f"the model has no hook {hook_name!r}; {hint}")
    if hook_name.endswith(_NOT_PER_TOKEN):
        raise SaeAmortError(f"hook {hook_name!r} is not one vector per token (it is per query/key pair); choose a "
                            "hook such as blocks.L.hook_resid_post")


def model_fingerprint(model: HookedTransformer) -> str:
    """A cheap digest of the architecture and a strided sample of every parameter (a retrained model misses)."""
    h = hashlib.sha256(json.dumps(
        {k: v for k, v in model.cfg.to_dict().items() if isinstance(v, (int, float, str, bool, type(None)))},
        sort_keys=True, default=str,
    ).encode())
    with torch.no_grad():
        for name, param in model.named_parameters():
            flat = param.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 64)][:64]
            h.update(name.encode())
            h.update(sample.to("cpu", torch.float32).numpy().tobytes())
    return h.hexdigest()[:16]


def collect_request(model: HookedTransformer, source: TextSource, cfg: CollectConfig, model_name: str) -> dict:
    """Everything that determines the collected rows; its digest names the cache directory."""
    return {
        "format": FORMAT_VERSION,
        "model_name": model_name,
        "model_fingerprint": model_fingerprint(model),
        "source": source.name,
        **asdict(cfg),
    }


def request_key(request: dict) -> str:
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:16]


class _Chunk(NamedTuple):
    doc: int
    chunk: int
    label: int
    ids: list[int]


class _Captured(Exception):
    """Raised by the capturing hook to end the forward pass at the hook."""


def _special_ids(model: HookedTransformer, cfg: CollectConfig) -> tuple[int | None, int]:
    tok = model.tokenizer
    if tok is None:
        raise SaeAmortError("the model has no tokenizer; load it with one (load_model does)")
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    if cfg.prepend_bos and bos is None:
        raise SaeAmortError("the tokenizer has neither a BOS nor an EOS token; collect with prepend_bos=False")
    pad = next((i for i in (tok.pad_token_id, bos, 0) if i is not None), 0)
    return (bos if cfg.prepend_bos else None), pad


def _iter_chunks(source: TextSource, model: HookedTransformer, cfg: CollectConfig, bos: int | None,
                 start: ResumePoint) -> Iterator[_Chunk]:
    chunk_len = cfg.context_size - (1 if bos is not None else 0)
    prefix = [bos] if bos is not None else []
    for doc, (text, label) in enumerate(source.iter_documents()):
        if doc < start.doc:
            continue
        if not text:
            continue
        ids = model.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        for chunk, offset in enumerate(range(0, len(ids), chunk_len)):
            if doc == start.doc and chunk < start.chunk:
                continue
            yield _Chunk(doc, chunk, label, prefix + ids[offset: offset + chunk_len])


def run_to_hook(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    hook_name: str,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, "batch pos ..."]:
    """The hook's activation, running the model only as far as the hook.

    `stop_at_layer` skips the blocks after the hook's layer, and the capturing hook ends the pass the moment it
    fires (which also skips the rest of its own block, and the unembedding for hooks outside the blocks).
    """
    captured: list[Tensor] = []

    def capture(act: Tensor, hook: Any) -> None:
        captured.append(act.detach())
        raise _Captured

    layer = hook_layer(hook_name)
    device = model.cfg.device or "cpu"
    mask = attention_mask.to(device) if attention_mask is not None else None
    with torch.no_grad(), model.hooks(fwd_hooks=[(hook_name, capture)]):
        try:
            model(tokens.to(device), attention_mask=mask, return_type=None,
                  stop_at_layer=None if layer is None else layer + 1)
        except _Captured:
            pass
    if not captured:
        raise SaeAmortError(f"hook {hook_name!r} never fires in this model's forward pass; choose another hook")
    return captured[0]


def live_activations(model: HookedTransformer, source: TextSource, cfg: CollectConfig,
                     dtype: torch.dtype = torch.float32) -> Iterator[ActivationBatch]:
    """The rows `collect_activations` would store, produced on the fly batch by batch (nothing written, no
    `n_tokens` limit: the stream ends with the source)."""
    check_hook(model, cfg.hook_name)
    bos, pad = _special_ids(model, cfg)
    chunks = _iter_chunks(source, model, cfg, bos, ResumePoint(0, 0, 0))
    while batch := list(islice(chunks, cfg.batch_size)):
        yield _forward_rows(model, batch, cfg.hook_name, 1 if bos is not None else 0, pad, dtype)


def _forward_rows(model: HookedTransformer, chunks: list[_Chunk], hook_name: str, first_pos: int, pad: int,
                  dtype: torch.dtype) -> ActivationBatch:
    """Run one right-padded batch up to the hook; rows of every real, non-BOS position in chunk-major order."""
    lengths = torch.tensor([len(c.ids) for c in chunks])
    width = int(lengths.max())
    tokens: Int[Tensor, "batch pos"] = torch.full((len(chunks), width), pad, dtype=torch.long)
    for i, c in enumerate(chunks):
        tokens[i, : len(c.ids)] = torch.tensor(c.ids)
    pos = torch.arange(width).expand(len(chunks), width)
    real = pos < lengths[:, None]
    keep = real & (pos >= first_pos)

    acts = run_to_hook(model, tokens, hook_name, attention_mask=real.long())
    if tuple(acts.shape[:2]) != tuple(tokens.shape):
        raise SaeAmortError(f"hook {hook_name!r} gives shape {tuple(acts.shape)}, not [batch, pos, ...]; choose a "
                            "per-token hook such as blocks.L.hook_resid_post")
    acts = acts.reshape(len(chunks), width, -1)  # heads etc. flattened into d_in
    doc_ids = torch.tensor([c.doc for c in chunks]).expand(width, -1).T
    labels = torch.tensor([c.label for c in chunks]).expand(width, -1).T
    keep_dev = keep.to(acts.device)
    return ActivationBatch(acts[keep_dev].to("cpu", dtype), tokens[keep], doc_ids[keep], pos[keep], labels[keep])


def stored_label_names(source: TextSource, out_dir: Path, shards: list[dict[str, Any]]) -> list[str] | None:
    """The source's class names; for integer labels without names (.jsonl, .parquet, a plain integer HF column)
    `class0`…`classN` up to the largest label stored; None when no row has a label."""
    if source.label_names:
        return list(source.label_names)
    top = -1
    for record in shards:
        with safe_open(out_dir / record["file"], "pt") as f:
            labels = f.get_tensor("labels")
        if labels.numel():
            top = max(top, int(labels.max()))
    return [f"class{c}" for c in range(top + 1)] or None


def _write_meta(out_dir: Path, request: dict, model: HookedTransformer, source: TextSource, cfg: CollectConfig,
                d_in: int | None, n_tokens: int, complete: bool, created: str,
                label_names: list[str] | None = None) -> None:
    atomic_write_json(out_dir / META_FILE, {
        "format": FORMAT_VERSION,
        "request": request,
        "model_name": request["model_name"],
        "hook_name": cfg.hook_name,
        "d_in": d_in,
        "dtype": cfg.dtype,
        "n_tokens": n_tokens,
        "n_tokens_requested": cfg.n_tokens,
        "source": source.name,
        "label_names": label_names,
        "model_n_layers": model.cfg.n_layers,
        "provenance": provenance(),
        "created": created,
        "complete": complete,
    })


def collect_activations(
    model: HookedTransformer,
    source: TextSource,
    cfg: CollectConfig,
    out_dir: Path | None = None,
    *,
    model_name: str,
    progress: bool = True,
) -> ActivationStore:
    """Collect `cfg.n_tokens` rows of `cfg.hook_name` over `source` into `out_dir` (default: a keyed cache folder).

    A complete store of the same request is returned without running the model; an interrupted one is resumed;
    a store of another request is refused.
    """
    check_hook(model, cfg.hook_name)
    if cfg.context_size > model.cfg.n_ctx:
        raise SaeAmortError(f"context_size {cfg.context_size} exceeds the model's context of {model.cfg.n_ctx} tokens; "
                            f"use --context-size {model.cfg.n_ctx} or less")
    request = collect_request(model, source, cfg, model_name)
    out_dir = Path(out_dir) if out_dir is not None else default_cache_dir() / "activations" / request_key(request)
    made_dir = not out_dir.exists()
    with claim_store_dir(out_dir, request) as claim:
        if claim.state == "complete":
            logger.info("activation cache hit: %s", out_dir)
        else:
            _collect_into(out_dir, claim, model, source, cfg, request, made_dir=made_dir, progress=progress)
    return ActivationStore.open(out_dir)


def _collect_into(out_dir: Path, claim: Claim, model: HookedTransformer, source: TextSource, cfg: CollectConfig,
                  request: dict, *, made_dir: bool, progress: bool) -> None:
    """Run the model over the source and write (or finish) the store claimed in `out_dir`."""
    manifest = claim.manifest
    bos, pad = _special_ids(model, cfg)
    created = (claim.meta or {}).get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z")
    try:
        if claim.state == "new":
            _write_meta(out_dir, request, model, source, cfg, None, 0, False, created)
    except OSError as e:
        raise SaeAmortError(f"cannot write to {out_dir} ({e.strerror or e}); choose another --out") from None

    writer = ShardWriter(out_dir, cfg.shard_tokens, manifest)
    resume = ResumePoint(**manifest["resume"]) if manifest and manifest.get("resume") else ResumePoint(0, 0, 0)
    if manifest:
        logger.info("resuming %s after %d rows (document %d)", out_dir, writer.rows_saved, resume.doc)
    dtype = TORCH_STORAGE_DTYPES[cfg.dtype]
    first_pos = 1 if bos is not None else 0
    d_in: int | None = None
    chunks = _iter_chunks(source, model, cfg, bos, resume)
    skip = resume.skip_rows
    finished = bool(manifest and manifest.get("complete"))  # only the final metadata write was missing
    with token_progress(cfg.n_tokens, f"collecting {cfg.hook_name}", enabled=progress) as advance:
        advance(writer.rows_saved)
        while not finished and writer.rows_total < cfg.n_tokens:
            batch = list(islice(chunks, cfg.batch_size))
            if not batch:
                break
            rows = _forward_rows(model, batch, cfg.hook_name, first_pos, pad, dtype)
            d_in = rows.acts.shape[1]
            writer.start_batch(batch[0].doc, batch[0].chunk, skipped_rows=skip)
            rows = rows.rows(skip, skip + cfg.n_tokens - writer.rows_total)
            skip = 0
            writer.add(rows)
            advance(rows.n_rows)
        writer.finish()
    if writer.rows_saved == 0:
        for name in (META_FILE, MANIFEST_FILE):
            (out_dir / name).unlink(missing_ok=True)
        if made_dir and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise SaeAmortError(f"source {source.name} has no text; give a source with non-empty documents")
    if writer.rows_saved < cfg.n_tokens:
        warnings.warn(f"source {source.name} ran out after {writer.rows_saved} of {cfg.n_tokens} requested tokens; "
                      "the store holds what there was", stacklevel=2)
    if d_in is None:  # resumed after the last shard was written but before the store was marked complete
        with safe_open(out_dir / writer.shards[0]["file"], "pt") as f:
            d_in = int(f.get_slice("acts").get_shape()[1])
    writer.write_manifest(None, complete=True)
    _write_meta(out_dir, request, model, source, cfg, d_in, writer.rows_saved, True, created,
                stored_label_names(source, out_dir, writer.shards))
