"""NMSE / FVU / MSE on hand-computed cases; exact merge."""

import pytest
import torch

from saelens_amort.metrics import MetricBatch, make_metric

X = torch.tensor([[1.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
RECON = torch.tensor([[1.0, 1.0], [0.0, 0.0], [2.0, 1.0]])
CODES = torch.zeros(3, 4)


def test_hand_computed_three_tokens():
    # errors² per token: 1, 4, 1 → Σ = 6;  ‖x‖²: 1, 4, 8 → Σ = 13
    # x̄ = (1, 4/3); Σ‖x − x̄‖² = 16/9 + (1 + 4/9) + (1 + 4/9) = 14/3
    m = make_metric("reconstruction")
    m.update(MetricBatch(X, RECON, CODES))
    out = m.compute()
    assert out["nmse"] == pytest.approx(6 / 13, rel=1e-12)
    assert out["fvu"] == pytest.approx(6 / (14 / 3), rel=1e-12)
    assert out["mse"] == pytest.approx(2.0, rel=1e-12)
    assert out["n_tokens"] == 3
    assert m.skipped == {}


@pytest.mark.parametrize("cut", [1, 2])
def test_merge_equals_one_pass(cut):
    a, b = make_metric("reconstruction"), make_metric("reconstruction")
    a.update(MetricBatch(X[:cut], RECON[:cut], CODES[:cut]))
    b.update(MetricBatch(X[cut:], RECON[cut:], CODES[cut:]))
    merged = a.merge(b).compute()
    whole = make_metric("reconstruction")
    whole.update(MetricBatch(X, RECON, CODES))
    for key, value in whole.compute().items():
        assert merged[key] == pytest.approx(value, rel=1e-12)


def test_merge_on_random_batches_is_exact_and_stable():
    gen = torch.Generator().manual_seed(0)
    x = 100.0 + torch.randn(1000, 8, generator=gen)  # large mean: E[x²] − E[x]² would cancel badly
    recon = x + 0.1 * torch.randn(1000, 8, generator=gen)
    parts = [make_metric("reconstruction") for _ in range(4)]
    for part, idx in zip(parts, torch.arange(1000).tensor_split([100, 350, 999])):
        part.update(MetricBatch(x[idx], recon[idx], torch.zeros(len(idx), 2)))
    merged = parts[0]
    for p in parts[1:]:
        merged.merge(p)
    xd, rd = x.double(), recon.double()
    sse = (xd - rd).square().sum()
    assert merged.compute()["fvu"] == pytest.approx(float(sse / (xd - xd.mean(0)).square().sum()), rel=1e-9)
    assert merged.compute()["nmse"] == pytest.approx(float(sse / xd.square().sum()), rel=1e-9)


def test_degenerate_inputs_are_skipped_with_reasons():
    m = make_metric("reconstruction")
    assert m.compute()["nmse"] is None and m.skipped["nmse"] == "no tokens"
    m.update(MetricBatch(torch.ones(3, 2), torch.zeros(3, 2), CODES))
    out = m.compute()
    assert out["fvu"] is None and m.skipped["fvu"] == "activations have zero variance"
    assert out["nmse"] == pytest.approx(1.0)
