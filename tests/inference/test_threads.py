"""Thread limits: a process's share of the cores covers torch and the BLAS pools numpy loads, and is undone after."""

import numpy as np
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from saelens_amort.inference.threads import intra_op_threads, process_threads


def blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_process_threads_limits_torch_and_blas_and_restores_them():
    np.ones((4, 4)) @ np.ones((4, 4))  # numpy's BLAS is loaded
    assert blas_threads(), "numpy loaded no BLAS pool to limit"
    old_torch = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with threadpool_limits(limits=2, user_api="blas"):
            with process_threads(1):
                assert torch.get_num_threads() == 1 and blas_threads() == {1}
            assert torch.get_num_threads() == 2 and blas_threads() == {2}
    finally:
        torch.set_num_threads(old_torch)


def test_intra_op_threads_touches_torch_only():
    old_torch = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with threadpool_limits(limits=2, user_api="blas"):
            with intra_op_threads(1):
                assert torch.get_num_threads() == 1 and blas_threads() == {2}
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old_torch)
