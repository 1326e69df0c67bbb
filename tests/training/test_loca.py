"""LocA-SAE as an SAE-Lens architecture: group TopK by definition, idempotent registration, exact save/load, AVar
grouping, and the reference defects pinned away (real gradients, loss falls, the evaluated model is the trained one)."""

import importlib

import pytest
import torch
from sae_lens import SAE, TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput

from saelens_amort import SaeAmortError
from saelens_amort.training import loca
from saelens_amort.training.loca import LocATrainingSAE, angular_variance, assign_groups, group_topk, loca_from_topk


def _global(d_in=16, d_sae=64, k=6, seed=0):
    torch.manual_seed(seed)
    return TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k))


def test_group_topk_by_hand():
    pre = torch.tensor([[5.0, 1.0, -2.0, 4.0, 3.0, 0.5]])
    group = torch.tensor([0, 0, 0, 1, 1, 1])
    assert group_topk(pre, group, [2, 1]).tolist() == [[5.0, 1.0, 0.0, 4.0, 0.0, 0.0]]
    assert group_topk(-pre, group, [1, 1]).tolist() == [[0.0, 0.0, 2.0, 0.0, 0.0, 0.0]]  # ReLU after TopK


def test_registration_is_idempotent():
    importlib.reload(loca)
    loca.register()
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

    assert "loca" in SAE_CLASS_REGISTRY and "loca" in SAE_TRAINING_CLASS_REGISTRY


def test_angular_variance_and_groups_by_hand():
    sae = _global()
    acts = torch.randn(400, 16)
    avar = angular_variance(sae, acts)
    z = sae.encode(acts) > 0
    j = int(z.sum(0).argmax())
    unit = acts / acts.norm(dim=1, keepdim=True)
    assert avar[j] == pytest.approx(float(1 - unit[z[:, j]].mean(0).norm()), abs=1e-5)
    group = assign_groups(torch.tensor([0.1, 0.9, 0.5, 0.7]), 2)
    assert group.tolist() == [1, 0, 1, 0]  # highest AVar first, into group 0


def test_save_load_encode_is_identical(tmp_path):
    acts = torch.randn(300, 16)
    model = loca_from_topk(_global(), acts, (3, 2, 1, 1))
    assert model.group.bincount().tolist() == [16, 16, 16, 16]
    model.save_inference_model(tmp_path / "sae")
    loaded = SAE.load_from_disk(tmp_path / "sae")
    assert type(loaded).__name__ == "LocASAE" and loaded.cfg.budgets == [3, 2, 1, 1] and loaded.cfg.k == 7
    assert torch.equal(loaded.group, model.group) and loaded.group.dtype == torch.long
    x = torch.randn(20, 16)
    torch.testing.assert_close(loaded.encode(x), model.encode(x), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(loaded.decode(loaded.encode(x)), model.decode(model.encode(x)), atol=1e-5, rtol=1e-5)
    per_group = [(loaded.encode(x)[:, loaded.group == g] > 0).sum(1).max().item() for g in range(4)]
    assert all(a <= b for a, b in zip(per_group, [3, 2, 1, 1])) and sum(per_group) > 0


def test_aux_loss_has_gradient_and_loss_falls():
    torch.manual_seed(0)
    model = loca_from_topk(_global(), torch.randn(300, 16), (3, 2, 1, 1))
    x = torch.randn(256, 16)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:20] = True
    out = model.training_forward_pass(TrainStepInput(sae_in=x, dead_neuron_mask=dead, coefficients={},
                                                     n_training_steps=0, is_logging_step=False))
    aux = out.losses["auxiliary_reconstruction_loss"]
    assert aux > 0
    aux.backward()
    assert model.W_dec.grad[:20].abs().sum() > 0  # the dead latents get a real gradient
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        out = model.training_forward_pass(TrainStepInput(sae_in=x, dead_neuron_mask=None, coefficients={},
                                                         n_training_steps=0, is_logging_step=False))
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert losses[-1] < 0.9 * losses[0]


def test_bad_budgets():
    with pytest.raises(SaeAmortError, match="do not fit"):
        LocATrainingSAE(loca.LocATrainingSAEConfig(d_in=16, d_sae=8, budgets=[3, 3, 3]))
    with pytest.raises(SaeAmortError, match="positive"):
        LocATrainingSAE(loca.LocATrainingSAEConfig(d_in=16, d_sae=64, budgets=[2, 0]))


def test_loca_in_every_mode(tmp_path):
    from saelens_amort import infer
    from saelens_amort.saes import Dictionary, load_sae

    model = loca_from_topk(_global(), torch.randn(300, 16), (3, 2, 1, 1))
    model.save_inference_model(tmp_path / "sae")
    sae = load_sae(str(tmp_path / "sae"))  # the true form: LocASAE with its groups
    x = torch.randn(64, 16)
    d = Dictionary.of(sae)
    assert d.d_sae == 64
    amort = infer(x, sae, "amortized", lam=0.1)
    torch.testing.assert_close(amort.codes, sae.encode(x).detach())
    semi, star = infer(x, sae, "semi", lam=0.1), infer(x, sae, "unamortized", lam=0.1)
    assert (semi.objective <= amort.objective + 1e-4).all() and star.objective.mean() <= semi.objective.mean() + 1e-4
