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


def test_counted_flops_replace_the_formula():
    """A batch that carries the FLOPs its mode counted is costed by them, not by the iteration formula."""
    m = make_metric("cost")
    batch = _batch("unamortized", [10, 20])._replace(flops=torch.tensor([100.0, 300.0], dtype=torch.float64))
    m.update(batch)
    assert m.compute()["flops_per_token"] == pytest.approx(200.0)
    assert m.artifacts()["flops_source"] == ["counted"]


@pytest.mark.parametrize("mode, kwargs", [
    ("amortized", {}), ("semi", {"lam": 5.0, "steps": 5}), ("unamortized", {"lam": 5.0}), ("omp", {"k": 8}),
    ("mp", {"k": 8}), ("ksparse", {}), ("semi_ksparse", {}), ("semi", {"lam": 5.0, "steps": 5, "refit": True}),
])
def test_every_built_in_mode_is_costed_by_its_counted_flops(mode, kwargs):
    """No built-in mode is left without FLOPs ("no FLOP model"): the metric reads each result's own count."""
    import saelens_amort
    from helpers import toy_activations
    from saelens_amort.inference import infer, resolve_dictionary
    from saelens_amort.metrics import metric_batch

    x = toy_activations()[:32]
    sae = saelens_amort.load_sae("toy/topk")
    res = infer(x, sae, mode, **kwargs)
    m = make_metric("cost")
    m.update(metric_batch(x, res, resolve_dictionary(sae)))
    out = m.compute()
    assert "flops_per_token" not in m.skipped
    assert out["flops_per_token"] == pytest.approx(float(res.info["flops"].mean()))
    assert m.artifacts()["flops_source"] == ["counted"]
