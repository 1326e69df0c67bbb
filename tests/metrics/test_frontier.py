"""Frontier maths: the L1 frontier is scikit-learn's positive lasso path; grids; log-log prices by hand."""

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import lars_path

from saelens_amort.inference import infer
from saelens_amort.metrics.frontier import NOT_REACHED, interpolate_loglog, k_grid, lambda_grid, lambda_max, price
from saelens_amort.runners.frontier import Curve, trace
from saelens_amort.saes import Dictionary

D_IN, D_SAE = 8, 16
TIGHT = {"tol": 1e-12, "steps": 50_000}


def _problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(D_SAE, D_IN, generator=g, dtype=torch.float64)
    atoms = atoms / atoms.norm(dim=1, keepdim=True)
    x = (torch.rand(1, D_SAE, generator=g, dtype=torch.float64) * (torch.rand(1, D_SAE, generator=g) < 0.3)) @ atoms
    x = x + 0.05 * torch.randn(1, D_IN, generator=g, dtype=torch.float64)
    # sklearn minimises (1 / (2 n_samples)) ‖y − Xw‖² + α‖w‖₁; with X = Aᵀ (n_samples = d_in) that is our
    # F = ½‖x′ − uA‖² + λ‖u‖₁ divided by d_in, at λ = d_in · α.
    alphas, _, coefs = lars_path(atoms.T.numpy(), x[0].numpy(), method="lasso", positive=True)
    return Dictionary.from_matrix(atoms), x, alphas * D_IN, coefs


def _objective(x, u, atoms, lam):
    r = x.numpy()[0] - u @ atoms.numpy()
    return 0.5 * float(r @ r) + lam * float(np.abs(u).sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_l1_frontier_is_sklearns_positive_lasso_path(seed):
    dictionary, x, lams, coefs = _problem(seed)
    assert len(lams) >= 4
    assert lambda_max(dictionary.target(x), dictionary.atoms) == pytest.approx(lams[0], rel=1e-9)
    # at the knots (but the last, λ ≈ 0, where d_sae > d_in leaves the code non-unique): codes and objective
    for lam, coef in zip(lams[1:-1], coefs.T[1:-1]):
        res = infer(x, dictionary, "unamortized", lam=float(lam), **TIGHT)
        assert res.codes[0].numpy() == pytest.approx(coef, abs=1e-6)
        assert float(res.objective[0]) == pytest.approx(_objective(x, coef, dictionary.atoms, lam), rel=1e-7)
    # between knots (the path is linear in λ there): the traced frontier's L0, NMSE and objective
    mids = [math.sqrt(a * b) for a, b in zip(lams[1:-2], lams[2:-1])]
    rows = trace([x], dictionary, [Curve("unamortized", "lam", tuple(mids), TIGHT)])
    for row, lam in zip(rows, mids):
        i = np.searchsorted(-lams, -lam)  # lams[i-1] > lam > lams[i]
        w = (lams[i - 1] - lam) / (lams[i - 1] - lams[i])
        coef = (1 - w) * coefs[:, i - 1] + w * coefs[:, i]
        r = x.numpy()[0] - coef @ dictionary.atoms.numpy()
        assert row["l0"] == np.count_nonzero(coef > 1e-12)
        assert row["nmse"] == pytest.approx(float(r @ r) / float((x * x).sum()), rel=1e-5)
        assert row["objective"] == pytest.approx(_objective(x, coef, dictionary.atoms, lam), rel=1e-6)


def test_grids():
    assert lambda_grid(8.0, 4, 1000.0) == pytest.approx((8.0, 0.8, 0.08, 0.008))
    assert k_grid(16, (0.25, 0.5, 1, 2, 4), 1024) == (4, 8, 16, 32, 64)
    assert k_grid(3, (0.1, 0.25, 1, 4, 1000), 20) == (1, 3, 12, 20)  # clipped to [1, d_sae], distinct


def test_price_by_hand():
    # log-log line through (1, 1) and (4, 1/4): NMSE = 1 / L0
    p = price([4.0, 1.0], [0.25, 1.0], encoder_l0=2.0, encoder_nmse=1.0)
    assert p.nmse_at_encoder_l0 == pytest.approx(0.5) and p.nmse_ratio == pytest.approx(2.0)
    assert p.l0_needed == pytest.approx(1.0) and p.l0_ratio == pytest.approx(2.0) and p.note == ""
    # NMSE_e = 0.35 between 0.5 (L0 2) and 0.25 (L0 4): log-log gives L0 = 2 · 2^(log(0.5/0.35)/log 2)
    p = price([1.0, 2.0, 4.0], [1.0, 0.5, 0.25], encoder_l0=3.0, encoder_nmse=0.35)
    assert p.l0_needed == pytest.approx(1 / 0.35) and p.nmse_at_encoder_l0 == pytest.approx(1 / 3)


def test_off_the_frontier_is_not_reached():
    p = price([1.0, 2.0], [1.0, 0.5], encoder_l0=10.0, encoder_nmse=0.1)
    assert p.nmse_ratio is None and p.l0_needed is None and p.l0_ratio is None
    assert p.note.count(NOT_REACHED) == 2
    # points without a logarithm (L0 = 0 at λ_max) are left out, not extrapolated through
    assert interpolate_loglog([0.0, 1.0, 4.0], [1.0, 1.0, 0.25], 0.5) is None
    assert interpolate_loglog([0.0, 1.0, 4.0], [1.0, 1.0, 0.25], 2.0) == pytest.approx(0.5)


def test_one_point_exactly_at_the_target_has_its_price():
    p = price([16.0], [0.0086], encoder_l0=16.0, encoder_nmse=0.0086)
    assert p.nmse_at_encoder_l0 == 0.0086 and p.nmse_ratio == 1.0 and p.l0_needed == 16.0 and p.note == ""
    p = price([16.0], [0.0086], encoder_l0=17.0, encoder_nmse=0.0087)
    assert p.nmse_ratio is None and p.l0_needed is None and p.note.count(NOT_REACHED) == 2


def test_ties_at_one_l0_count_at_their_lowest_nmse_whatever_the_order():
    for nmse in ([0.05, 0.04, 0.01], [0.04, 0.05, 0.01]):
        p = price([10.0, 10.0, 20.0], nmse, encoder_l0=15.0, encoder_nmse=0.03)
        # between (10, 0.04) and (20, 0.01) in log-log
        assert p.nmse_at_encoder_l0 == pytest.approx(0.04 * (0.01 / 0.04) ** (math.log(1.5) / math.log(2)))
        assert p.l0_needed == pytest.approx(10 * 2 ** (math.log(0.03 / 0.04) / math.log(0.01 / 0.04)))
    # repeated points (a knob value given twice) change nothing
    assert price([4.0, 1.0, 4.0], [0.25, 1.0, 0.25], 2.0, 1.0) == price([4.0, 1.0], [0.25, 1.0], 2.0, 1.0)


def test_non_monotone_frontier_needs_its_least_l0():
    # U-shaped: NMSE 0.03 is crossed between L0 8 and 16 and again between 32 and 64; the least L0 counts
    l0, nmse = [64.0, 4.0, 16.0, 8.0, 32.0], [0.062, 0.2, 0.009, 0.054, 0.02]
    p = price(l0, nmse, encoder_l0=20.0, encoder_nmse=0.03)
    assert 8.0 < p.l0_needed < 16.0
    assert p.l0_needed == pytest.approx(8 * 2 ** (math.log(0.03 / 0.054) / math.log(0.009 / 0.054)))


def test_not_reached_spans_only_the_points_used():
    p = price([0.0, 1.0, 5.0], [1.0, 0.8, 0.3], encoder_l0=0.5, encoder_nmse=0.9)
    assert "L0 spans 1–5" in p.note and "NMSE spans 0.3–0.8" in p.note
