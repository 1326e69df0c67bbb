"""The atom Gram matrix G = AAᵀ, cached per dictionary and shared by every mode that uses it (OMP, MP, the
working-set lasso solver).

Memory: d_sae² numbers in the work dtype — 64 MiB at d_sae = 4096 and 1 GiB at 16384 in fp32 (×2 in fp64).
Building it costs 2·d_sae²·d_in FLOPs (= d_sae / N encoder passes over N rows), so it pays off when it is reused:
modes build it only when it fits `max_bytes` and the rows at hand (or an existing cache entry) justify it.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor

from saelens_amort.saes.dictionary import Dictionary

DEFAULT_MAX_BYTES = 1 << 30
"""Largest Gram built by default (1 GiB: d_sae = 16384 in fp32)."""

_GRAM_CACHE: "weakref.WeakKeyDictionary[Dictionary, dict[Any, tuple[tuple, Tensor]]]" = (
    weakref.WeakKeyDictionary())
"""Per dictionary, one Gram per dtype (a mode may use the work-dtype Gram and the fp64 one in one call: OMP's start
and the k-sparse polish, the working-set solver and refit); `padded_gram`'s entries are keyed ("padded",
dtype)."""


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64; everything else (fp32, fp16, bf16) is solved in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def gram_bytes(d_sae: int, dtype: torch.dtype) -> int:
    """Bytes of a d_sae × d_sae Gram in `dtype`."""
    return d_sae * d_sae * torch.finfo(dtype).bits // 8


def _cached(dictionary: Dictionary, entry: Any) -> Tensor | None:
    """The cache's `entry` for `dictionary` if it was built from the atoms as they are now (not modified since)."""
    hit = _GRAM_CACHE.get(dictionary, {}).get(entry)
    return hit[1] if hit is not None and hit[0] == _atoms_version(dictionary) else None


def _store(dictionary: Dictionary, entry: Any, value: Tensor) -> Tensor:
    _GRAM_CACHE.setdefault(dictionary, {})[entry] = (_atoms_version(dictionary), value)
    return value


def _atoms_version(dictionary: Dictionary) -> tuple[int, int]:
    return dictionary.atoms._version, dictionary.atoms.data_ptr()


def atom_gram(dictionary: Dictionary, dtype: torch.dtype) -> Tensor:
    """AAᵀ in `dtype`, cached per dictionary and dtype (rebuilt when its atoms are modified in place)."""
    hit = _cached(dictionary, dtype)
    if hit is not None:
        return hit
    A = dictionary.atoms.to(dtype)
    return _store(dictionary, dtype, A @ A.T)


def padded_gram(dictionary: Dictionary, dtype: torch.dtype, slots: int) -> Tensor:
    """[[AAᵀ, 0], [0, I_P]] in `dtype` with P ≥ `slots` (a power of two, at least 64): reading "atom" d_sae + s gives
    an identity row, so one gather builds a support system with the identity on its inactive slots (refit's
    `SupportSystems`). Cached per dictionary and dtype beside `atom_gram`'s entry, grown when more slots are asked
    for; the unpadded Gram in this dtype is not kept (refit and the k-sparse polish use only this one)."""
    m = dictionary.atoms.shape[0]
    hit = _cached(dictionary, ("padded", dtype))
    if hit is not None and hit.shape[0] - m >= slots:
        return hit
    pad = max(64, 1 << max(slots - 1, 0).bit_length())
    out = torch.zeros(m + pad, m + pad, dtype=dtype, device=dictionary.atoms.device)
    A = dictionary.atoms.to(dtype)
    out[:m, :m] = A @ A.T
    out[m:, m:].diagonal().fill_(1)
    return _store(dictionary, ("padded", dtype), out)


def sub_gram(gram: Tensor, idx: Tensor) -> Tensor:
    """gram[idx[r, s], idx[r, t]] as an [r, T, T] tensor: a random gather through int32 flat indices and
    index_select, 2–3× faster on CPU than advanced indexing or `take` (int64 indices)."""
    r, T = idx.shape
    i = idx.int() if gram.numel() < 2**31 else idx
    flat = (i.unsqueeze(2) * gram.shape[1] + i.unsqueeze(1)).view(-1)
    return gram.reshape(-1).index_select(0, flat).view(r, T, T)


def flat_gather(t: Tensor, rows: Tensor, idx: Tensor) -> Tensor:
    """t[rows[r], idx[r, s]] as an [r, T] tensor without copying t[rows] (one index_select on flat indices)."""
    return t.view(-1).index_select(0, ((rows * t.shape[1]).unsqueeze(1) + idx).reshape(-1)).view(idx.shape)


def has_gram(dictionary: Dictionary, dtype: torch.dtype) -> bool:
    """A current Gram of `dictionary` in `dtype` is cached."""
    return _cached(dictionary, dtype) is not None


def drop_gram(dictionary: Dictionary) -> None:
    """Forget the cached Grams of `dictionary` (frees their memory)."""
    _GRAM_CACHE.pop(dictionary, None)
