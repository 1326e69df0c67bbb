"""Cost: seconds and FLOPs per token from the documented FLOP models."""

import pytest
import torch

from saelens_amort.metrics import MetricBatch, make_metric

D, M = 4, 8


def _batch(mode, n_iter, seconds=None):
    n_iter = torch.tensor(n_iter)
    n = n_iter.shape[0]
    return MetricBatch(torch.zeros(n, D), torch.zeros(n, D), torch.zeros(n, M), n_iter=n_iter, seconds=seconds,
                       mode=mode)


@pytest.mark.parametrize(
    "mode, n_iter, flops",
    [
        ("amortized", [0, 0], 2 * D * M),
        ("unamortized", [10, 20], 4 * D * M * 15),
        ("semi", [5], 2 * D * M + 5 * 4 * D * M),
        ("omp", [2], 2 * 2 * D * M + 2 * D * 2 * 3 + 2 * 3 * 5 / 2),
        ("mp", [3], 3 * (2 * D * M + 2 * D)),
    ],
)
def test_flops_per_token(mode, n_iter, flops):
    m = make_metric("cost")
    m.update(_batch(mode, n_iter))
    assert m.compute()["flops_per_token"] == pytest.approx(flops)
    assert "seconds_per_token" in m.skipped


def test_seconds_per_token_and_merge():
    a, b = make_metric("cost"), make_metric("cost")
    a.update(_batch("unamortized", [1, 3], seconds=0.5))
    b.update(_batch("unamortized", [2, 2], seconds=1.5))
    out = a.merge(b).compute()
    assert out["seconds_per_token"] == pytest.approx(0.5)
    assert out["n_iter_mean"] == pytest.approx(2.0)
    assert out["flops_per_token"] == pytest.approx(4 * D * M * 2)
    assert a.skipped == {}


def test_unknown_mode_has_no_flop_model():
    m = make_metric("cost")
    m.update(_batch("my_mode", [3], seconds=0.1))
    out = m.compute()
    assert out["flops_per_token"] is None and m.skipped["flops_per_token"] == "no FLOP model for mode my_mode"
    assert out["seconds_per_token"] == pytest.approx(0.1)
