"""torch.distributed for `eval` under torchrun: rank, contiguous work split, exact metric reduction.

`torchrun --nproc-per-node N -m saelens_amort eval …` (or several nodes with the usual rendezvous flags) starts N
processes; each takes a contiguous block of the activation batches, and the metric accumulators — sums, counts,
histograms and first-N samples, all mergeable — are gathered to rank 0 and merged in rank order, which equals one pass
over all batches in order (float summation order aside). λ is calibrated on rank 0 and broadcast; spliced CE/KL runs on
rank 0; only rank 0 writes outputs. Backend: gloo on CPU, nccl on CUDA. Without torchrun everything is a no-op.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

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


def gather(value: Any) -> list[Any] | None:
    """Every rank's `value`, in rank order, on rank 0 (None elsewhere)."""
    if not active():
        return [value]
    out = [None] * world() if is_main() else None
    dist.gather_object(value, out, dst=0)
    return out


def merge_metrics(metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]] | None:
    """{variant: {family: Metric}} merged over ranks in rank order on rank 0 (None on the other ranks)."""
    parts = gather(metrics)
    if parts is None:
        return None
    merged = parts[0]
    for other in parts[1:]:
        for variant, families in other.items():
            for name, metric in families.items():
                merged[variant][name].merge(metric)
    return merged
