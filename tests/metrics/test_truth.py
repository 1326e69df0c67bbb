"""Truth metrics against hand-built cases and numpy's own correlation."""

import numpy as np
import pytest
import torch
from saelens_amort.errors import SaeAmortError
from saelens_amort.metrics import MetricBatch, make_metric, match_latents


def _world(n=400, seed=0):
    """4 true features in 6 dims: 0 is the parent of 1 and 2; 3 is a root. Codes drawn with the hierarchy."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.linalg.qr(torch.randn(6, 4, generator=g, dtype=torch.float64))[0].T.float()  # orthonormal rows
    parent = torch.tensor([-1, 0, 0, -1])
    on = torch.rand(n, 4, generator=g) < torch.tensor([0.5, 0.5, 0.5, 0.3])
    on[:, 1:3] &= on[:, :1]
    s = torch.where(on, 0.5 + torch.rand(n, 4, generator=g), 0.0)
    return atoms, parent, s


def _score(atoms, parent, sae_atoms, s, codes, chunks=1):
    m = make_metric("truth", true_atoms=atoms, parent=parent, sae_atoms=sae_atoms)
    for part_s, part_z in zip(s.chunk(chunks), codes.chunk(chunks)):
        x = part_s @ atoms
        m.update(MetricBatch(x=x, recon=x, codes=part_z, truth=part_s))
    return m.compute(), m


def test_the_truth_scores_perfectly_in_any_latent_order():
    atoms, parent, s = _world()
    perm = torch.tensor([2, 0, 3, 1])  # latent j is feature perm[j]
    out, _ = _score(atoms, parent, atoms[perm], s, s[:, perm])
    assert out["recovered"] == 1.0 and out["mean_match_cos"] == pytest.approx(1.0)
    assert out["code_mcc"] == pytest.approx(1.0)
    assert out["true_absorption"] == 0.0
    assert out["true_splitting"] == 0.0
    latent, _ = match_latents(atoms, atoms[perm])
    assert latent.tolist() == [1, 3, 0, 2]


def test_mcc_equals_numpy_corrcoef_on_noisy_codes_and_merges_exactly():
    atoms, parent, s = _world(seed=1)
    g = torch.Generator().manual_seed(5)
    codes = (s + 0.3 * torch.rand(s.shape, generator=g)) * (torch.rand(s.shape, generator=g) > 0.2)
    expected = np.mean([np.corrcoef(s[:, i].numpy(), codes[:, i].numpy())[0, 1] for i in range(4)])
    whole, _ = _score(atoms, parent, atoms, s, codes)
    assert whole["code_mcc"] == pytest.approx(expected, abs=1e-6)
    halves = [_score(atoms, parent, atoms, a, b)[1] for a, b in zip(s.chunk(2), codes.chunk(2))]
    assert halves[0].merge(halves[1]).compute()["code_mcc"] == pytest.approx(expected, abs=1e-6)


def test_a_parent_latent_silenced_by_its_children_is_absorption():
    atoms, parent, s = _world(seed=2)
    codes = s.clone()
    child_on = (s[:, 1:3] > 0).any(1)
    codes[child_on, 0] = 0.0  # the parent's latent never fires with a child: the children absorbed it
    out, _ = _score(atoms, parent, atoms, s, codes)
    assert out["true_absorption"] == pytest.approx(1.0)
    codes[child_on & (torch.arange(len(s)) % 2 == 0), 0] = 1.0  # half the time it still fires
    out, _ = _score(atoms, parent, atoms, s, codes)
    assert 0.35 < out["true_absorption"] < 0.65


def test_a_feature_served_by_two_disjoint_latents_is_split():
    atoms, parent, s = _world(seed=3)
    # 5 latents: features 0..3, plus a copy of feature 3's direction; feature 3's tokens split between them.
    sae_atoms = torch.cat([atoms, atoms[3:4]])
    codes = torch.cat([s, torch.zeros(len(s), 1)], 1)
    on3 = torch.nonzero(s[:, 3] > 0).flatten()
    codes[on3[::2], 4], codes[on3[::2], 3] = s[on3[::2], 3], 0.0
    out, _ = _score(atoms, parent, sae_atoms, s, codes)
    assert out["true_splitting"] == pytest.approx(1 / 4)  # 1 of the 4 features that fired on ≥ 20 tokens
    out, _ = _score(atoms, parent, sae_atoms, s, torch.cat([s, s[:, 3:4]], 1))  # both fire together: no split
    assert out["true_splitting"] == 0.0


def test_shapes_that_do_not_fit_are_refused():
    atoms, parent, s = _world()
    with pytest.raises(SaeAmortError, match="same d"):
        make_metric("truth", true_atoms=atoms, parent=parent, sae_atoms=torch.randn(4, 7))
    m = make_metric("truth", true_atoms=atoms, parent=parent, sae_atoms=atoms)
    with pytest.raises(SaeAmortError, match="no true codes"):
        m.update(MetricBatch(x=s @ atoms, recon=s @ atoms, codes=s))
