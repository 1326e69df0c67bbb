"""Amortization gap: hand-computed mean / median / relative; skips; exact merge."""

import pytest
import torch

from saelens_amort.metrics import MetricBatch, make_metric

OBJ = torch.tensor([3.0, 5.0, 4.0, 10.0])
STAR = torch.tensor([1.0, 2.0, 4.0, 4.0])  # Δ = 2, 3, 0, 6


def _batch(obj, star):
    n = obj.shape[0]
    return MetricBatch(torch.zeros(n, 2), torch.zeros(n, 2), torch.zeros(n, 3), objective=obj, objective_star=star)


def test_hand_computed_gap():
    m = make_metric("gap")
    m.update(_batch(OBJ, STAR))
    out = m.compute()
    assert out["gap_mean"] == pytest.approx(11 / 4)
    assert out["gap_median"] == pytest.approx(2.5)
    assert out["gap_relative"] == pytest.approx(1.0)
    assert out["frac_negative"] == 0.0


def test_merge_equals_one_pass_and_sample_is_first_n():
    a, b, whole = make_metric("gap", max_sample=3), make_metric("gap", max_sample=3), make_metric("gap", max_sample=3)
    a.update(_batch(OBJ[:1], STAR[:1]))
    b.update(_batch(OBJ[1:], STAR[1:]))
    whole.update(_batch(OBJ, STAR))
    assert a.merge(b).compute() == whole.compute()
    assert whole.compute()["gap_median"] == pytest.approx(2.0)  # median of the first 3: (2, 3, 0)
    assert whole.compute()["gap_mean"] == pytest.approx(11 / 4)  # the mean is over every token


def test_negative_gap_counts_and_nan_rows_are_dropped():
    m = make_metric("gap")
    m.update(_batch(torch.tensor([1.0, float("nan"), 2.0]), torch.tensor([1.5, 1.0, 1.0])))
    out = m.compute()
    assert out["n_tokens"] == 2 and out["frac_negative"] == 0.5 and out["gap_mean"] == pytest.approx(0.25)


def test_skipped_without_reference_or_lambda():
    m = make_metric("gap")
    m.update(MetricBatch(torch.zeros(2, 2), torch.zeros(2, 2), torch.zeros(2, 3), objective=torch.ones(2)))
    out = m.compute()
    assert out["gap_mean"] is None and "objective_star" in m.skipped["gap_median"]
    m = make_metric("gap")
    m.update(_batch(torch.full((2,), float("nan")), torch.ones(2)))
    m.compute()
    assert "NaN" in m.skipped["gap_mean"]
