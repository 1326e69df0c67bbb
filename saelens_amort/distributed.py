"""torch.distributed for `eval` under torchrun: rank, contiguous work split, exact metric reduction.

`torchrun --nproc-per-node N -m saelens_amort eval …` (or several nodes with the usual rendezvous flags) starts N
processes; each takes a contiguous block of the activation batches, and the metric accumulators — sums, counts,
histograms and first-N samples, all mergeable — are merged in rank order, which equals one pass over all batches in
order (float summation order aside): each variant's on one rank (dealt out round-robin), which computes its metrics,
and the computed values are gathered to rank 0. λ is calibrated on rank 0 and broadcast; spliced CE/KL runs on
rank 0; only rank 0 writes outputs. Backend: gloo on CPU, nccl on CUDA. Without torchrun everything is a no-op.
"""

from __future__ import annotations

import copy
import datetime
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.distributed as dist

from saelens_amort.errors import SaeAmortError

TIMEOUT_MINUTES = 30


def init(device: str = "cpu") -> None:
    """Join the process group torchrun describes (WORLD_SIZE > 1); no-op otherwise or when already joined."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    backend = "nccl" if device.startswith("cuda") else "gloo"
    try:
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=TIMEOUT_MINUTES))
    except (RuntimeError, ValueError) as e:
        raise SaeAmortError(f"cannot join the torchrun process group ({backend}): {e}") from None


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def block(n_items: int) -> range:
    """This rank's contiguous share of range(n_items) (ranks in order cover it exactly once)."""
    r, w = rank(), world()
    return range(n_items * r // w, n_items * (r + 1) // w)


def broadcast(value: Any) -> Any:
    """Rank 0's `value` on every rank."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any, dst: int = 0) -> list[Any] | None:
    """Every rank's `value`, in rank order, on rank `dst` (None elsewhere).

    The tensors inside `value` (in dicts, lists, tuples and objects' attributes) travel out of band: `gather_object`
    carries the value with each tensor replaced by a reference, and each tensor is sent as itself into a tensor rank
    `dst` allocates for it. `gather_object` alone would serialise the tensors' bytes, pad every rank's buffer to the
    largest and deserialise copies: about four times the data on rank 0 (the main job's metric samples on the L1
    SAEs: 850 MB), where this holds it once."""
    if not active():
        return [value]
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    tensors: list[torch.Tensor] = []
    index: dict[int, int] = {}

    def reference(t: torch.Tensor) -> _Ref:
        if id(t) not in index:  # a tensor named twice is sent once
            index[id(t)] = len(tensors)
            tensors.append(t)
        return _Ref(index[id(t)], str(t.dtype).removeprefix("torch."), tuple(t.shape), t.device.type)

    here = rank() == dst
    parts = [None] * world() if here else None
    dist.gather_object(_replace(value, torch.Tensor, reference, {}), parts, dst=dst)
    if not here:
        for t in tensors:
            if t.numel():
                dist.send(t.detach().to(device).contiguous(), dst=dst)
        return None
    out = []
    for src in range(world()):
        if src == dst:
            out.append(value)
            continue
        received: dict[int, torch.Tensor] = {}

        def receive(ref: _Ref, src: int = src, received: dict = received) -> torch.Tensor:
            if ref.index not in received:  # first met in the order it was sent: both walks visit in one order
                t = torch.empty(ref.shape, dtype=getattr(torch, ref.dtype), device=device)
                if t.numel():
                    dist.recv(t, src=src)
                received[ref.index] = t.cpu() if ref.device == "cpu" else t
            return received[ref.index]

        out.append(_replace(parts[src], _Ref, receive, {}))
    return out


class _Ref(NamedTuple):
    """Where a tensor was: its index in the sender's list, dtype, shape and device type (CPU tensors come back on
    the receiver's CPU, CUDA ones on its current device)."""

    index: int
    dtype: str
    shape: tuple[int, ...]
    device: str


def _replace(obj: Any, leaf: type, fn: Callable[[Any], Any], memo: dict[int, Any]) -> Any:
    """A copy of `obj` with every instance of `leaf` replaced by fn(it), looked for in dicts, lists, tuples (named
    ones kept as their type) and objects' attributes, each copied shallowly once (memo: shared parts and cycles stay
    shared); anything else is kept as it is."""
    if isinstance(obj, leaf):
        return fn(obj)
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, dict):
        new = memo[id(obj)] = copy.copy(obj)
        for k, v in obj.items():
            new[k] = _replace(v, leaf, fn, memo)
    elif isinstance(obj, list):
        new = memo[id(obj)] = []
        new.extend(_replace(v, leaf, fn, memo) for v in obj)
    elif isinstance(obj, tuple):
        items = [_replace(v, leaf, fn, memo) for v in obj]
        new = memo[id(obj)] = type(obj)._make(items) if hasattr(obj, "_fields") else type(obj)(items)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type) and not callable(obj):
        new = memo[id(obj)] = copy.copy(obj)
        for k, v in vars(obj).items():
            object.__setattr__(new, k, _replace(v, leaf, fn, memo))
    else:
        return obj
    return new


def owner(i: int) -> int:
    """The rank that finishes the i-th of a list of items dealt out round-robin (`deal_metrics`)."""
    return i % world()


def deal_metrics(metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{variant: {family: Metric}} merged over ranks in rank order, each variant on its `owner` (by its place in
    `metrics`): this rank's variants only, so the ranks compute the metrics of different variants at once."""
    labels = list(metrics)
    mine: dict[str, dict[str, Any]] = {}
    for dst in range(world()):
        parts = gather({v: metrics[v] for i, v in enumerate(labels) if owner(i) == dst}, dst=dst)
        if parts is None:
            continue
        mine = parts[0]
        for other in parts[1:]:
            for variant, families in other.items():
                for name, metric in families.items():
                    mine[variant][name].merge(metric)
    return mine
