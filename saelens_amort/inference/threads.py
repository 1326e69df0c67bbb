"""Thread limits: torch's intra-op threads in a block (small batched linear algebra runs faster on one thread), and a
process's share of the cores when several processes split a run (torch and the BLAS numpy calls)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """Run torch on at most `n` intra-op threads inside the block (None: leave it)."""
    old = torch.get_num_threads()
    if n is None or n >= old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def process_threads(n: int) -> Iterator[None]:
    """Run torch, and the BLAS libraries numpy and scipy load (threadpoolctl), on at most `n` threads inside the
    block: one of several processes sharing the cores. A BLAS pool left at every core spins its idle threads after
    each call and starves the other processes (--workers 2, toy/topk and toy/jumprelu at 20 000 tokens: rank 0's
    probe stage 2.5–6.1 s while both ranks fitted probes, 1.2–1.4 s with one BLAS thread each)."""
    from threadpoolctl import threadpool_limits

    with intra_op_threads(n), threadpool_limits(limits=n, user_api="blas"):
        yield
