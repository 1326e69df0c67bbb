"""A scoped limit on torch's intra-op threads (small batched linear algebra runs faster on one thread)."""

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

