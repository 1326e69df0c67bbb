"""Claiming a store directory for a collection: one writer at a time, checked against the request, leftovers cleared.

The directory itself is the lock (`flock` on it, released when the collection ends, also when the process dies), so a
second identical collection started meanwhile waits and then finds the store complete instead of deleting the first
one's temporary files. A store that was interrupted before it saved any shard holds no work and is started afresh,
whatever it was collecting; one with shards resumes only for the same request.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from saelens_amort.activations.shards import MANIFEST_FILE, META_FILE, is_tmp, sha256_file
from saelens_amort.activations.store import read_json
from saelens_amort.errors import SaeAmortError

logger = logging.getLogger(__name__)


class Claim(NamedTuple):
    """What the directory holds for this request: state 'new', 'resume' or 'complete', with its files' contents."""

    state: str
    manifest: dict[str, Any] | None
    meta: dict[str, Any] | None


@contextmanager
def claim_store_dir(out_dir: Path, request: dict[str, Any]) -> Iterator[Claim]:
    """Hold `out_dir`'s lock (creating it) while the caller collects into it; refuses foreign or mismatched dirs."""
    fd = _lock(out_dir)
    try:
        yield _prepare(out_dir, request)
    finally:
        os.close(fd)


def _lock(out_dir: Path) -> int:
    while True:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SaeAmortError(f"cannot create store directory {out_dir} ({e.strerror or e}); choose another "
                                "--out") from None
        if not out_dir.is_dir():
            raise SaeAmortError(f"store path {out_dir} is not a directory; choose another --out")
        fd = os.open(out_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another collection into %s to finish", out_dir)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.path.samestat(os.fstat(fd), os.stat(out_dir)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder removed the directory (its collection failed empty): claim it anew


def _prepare(out_dir: Path, request: dict[str, Any]) -> Claim:
    for stray in out_dir.iterdir():
        if is_tmp(stray):
            stray.unlink(missing_ok=True)
    meta_path, manifest_path = out_dir / META_FILE, out_dir / MANIFEST_FILE
    if not meta_path.exists():
        if any(out_dir.iterdir()):
            raise SaeAmortError(f"{out_dir} is not empty and is not an activation store; use another --out")
        return Claim("new", None, None)
    meta = read_json(meta_path, "store metadata")
    manifest = read_json(manifest_path, "store manifest") if manifest_path.exists() else None
    records = (manifest or {}).get("shards", [])
    listed = [r["file"] for r in records]
    if not meta.get("complete") and not listed:
        logger.info("%s was interrupted before it saved any activations; starting it afresh", out_dir)
        _remove_unlisted_shards(out_dir, listed)
        manifest_path.unlink(missing_ok=True)
        meta_path.unlink()
        return Claim("new", None, None)
    old = meta.get("request", {})
    if old != request:
        diff = sorted(k for k in set(old) | set(request) if old.get(k) != request.get(k))
        shown = "; ".join(f"{k}: {old.get(k)!r} vs {request.get(k)!r}" for k in diff[:3])
        raise SaeAmortError(f"{out_dir} holds activations of a different request ({shown}); use another --out or "
                            "delete it")
    if meta.get("complete"):
        return Claim("complete", None, meta)
    for record in records:  # resume only on top of intact shards
        shard = out_dir / record["file"]
        if not shard.is_file() or sha256_file(shard) != record.get("sha256"):
            raise SaeAmortError(f"activation shard {shard} is missing or does not match its recorded sha256; "
                                f"delete {out_dir} and collect again")
    _remove_unlisted_shards(out_dir, listed)
    return Claim("resume", manifest, meta)


def _remove_unlisted_shards(out_dir: Path, listed: list[str]) -> None:
    """Shards written but never listed: the manifest is the truth."""
    for orphan in out_dir.glob("shard_*.safetensors"):
        if orphan.name not in listed:
            orphan.unlink()
