"""Thread limits: a process's share of the cores covers torch and the BLAS pools numpy loads, and is undone after."""

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from saelens_amort.inference.threads import intra_op_threads, process_threads


def blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


@pytest.mark.parametrize("limit, blas_inside", [(process_threads, 1), (intra_op_threads, 2)],
                         ids=["process_threads", "intra_op_threads"])
def test_thread_limits_and_their_undoing(limit, blas_inside):
    """process_threads limits torch and the BLAS pools; intra_op_threads torch only; both restore what was there."""
    np.ones((4, 4)) @ np.ones((4, 4))  # numpy's BLAS is loaded
    assert blas_threads(), "numpy loaded no BLAS pool to limit"
    old_torch = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with threadpool_limits(limits=2, user_api="blas"):
            with limit(1):
                assert torch.get_num_threads() == 1 and blas_threads() == {blas_inside}
            assert torch.get_num_threads() == 2 and blas_threads() == {2}
    finally:
        torch.set_num_threads(old_torch)
