"""L0, firing frequencies, dead / dense rates on a 4×3 code matrix; exact merge."""

import pytest
import torch

from saelens_amort.metrics import MetricBatch, make_metric
from saelens_amort.metrics.sparsity import LOG10_FREQ_EDGES

CODES = torch.tensor([
    [1.0, 0.0, 0.0],
    [2.0, 0.0, 0.0],
    [0.5, 3.0, 0.0],
    [1.0, 0.0, 0.0],
])


def _batch(codes):
    n = codes.shape[0]
    return MetricBatch(torch.zeros(n, 2), torch.zeros(n, 2), codes)


def test_hand_computed_frequencies_and_rates():
    m = make_metric("sparsity")
    m.update(_batch(CODES))
    out = m.compute()
    # f = (1, 1/4, 0); L0 = (1 + 1 + 2 + 1) / 4
    assert torch.equal(m.frequencies(), torch.tensor([1.0, 0.25, 0.0], dtype=torch.float64))
    assert out == {"l0": 1.25, "dead_rate": pytest.approx(1 / 3), "dense_rate@0.1": pytest.approx(2 / 3),
                   "dense_rate@0.2": pytest.approx(2 / 3), "n_tokens": 4.0}
    hist = m.artifacts()["log10_frequency_histogram"]
    assert hist["never_fired"] == 1 and sum(hist["counts"]) == 2
    assert hist["counts"][-1] == 1  # f = 1 → the last bin
    assert hist["counts"][int((torch.tensor(0.25).log10().item() - LOG10_FREQ_EDGES[0]) / 0.25)] == 1


def test_dense_thresholds_and_negative_codes():
    m = make_metric("sparsity", dense_thresholds=(0.2, 0.3))
    codes = CODES.clone()
    codes[0, 2] = -1.0  # counts for L0 (≠ 0) but does not fire (> 0)
    m.update(_batch(codes))
    out = m.compute()
    assert out["l0"] == 1.5
    assert out["dense_rate@0.2"] == pytest.approx(2 / 3) and out["dense_rate@0.3"] == pytest.approx(1 / 3)
    assert out["dead_rate"] == pytest.approx(1 / 3)


def test_merge_equals_one_pass():
    a, b, whole = make_metric("sparsity"), make_metric("sparsity"), make_metric("sparsity")
    a.update(_batch(CODES[:1]))
    b.update(_batch(CODES[1:]))
    whole.update(_batch(CODES))
    assert a.merge(b).compute() == whole.compute()
    assert torch.equal(a.frequencies(), whole.frequencies())


def test_no_tokens_is_skipped():
    m = make_metric("sparsity")
    out = m.compute()
    assert out["l0"] is None and m.skipped["dead_rate"] == "no tokens"
