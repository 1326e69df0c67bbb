"""refit=True: NNLS on the support a mode chose equals scipy.optimize.nnls; never worse; works for every mode."""

import numpy as np
import pytest
import torch
from helpers import random_dictionary, sparse_signals, torch_threads
from scipy.optimize import nnls as scipy_nnls

from saelens_amort.inference import infer
from saelens_amort.inference import refit
from saelens_amort.inference.refit import refit_codes


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def scipy_refit(x_target, u, atoms):
    """Reference: scipy's NNLS on each row's support columns."""
    out = np.zeros_like(u)
    for r in range(u.shape[0]):
        support = np.flatnonzero(u[r] > 0)
        if support.size:
            out[r, support] = scipy_nnls(atoms[support].T, x_target[r])[0]
    return out


@pytest.mark.parametrize("pdas_rounds", [refit.PDAS_ROUNDS, 1], ids=["active-set", "lawson-hanson"])
@pytest.mark.parametrize("gram", [True, False], ids=["gram-lookup", "support-atoms"])
def test_refit_codes_equal_scipy_nnls_on_random_supports(gram, pdas_rounds, monkeypatch):
    if not gram:  # wide dictionaries build each row's support Gram from its atoms instead of the cached Gram
        monkeypatch.setattr(refit, "GRAM_BYTES", 0)
    monkeypatch.setattr(refit, "PDAS_ROUNDS", pdas_rounds)  # 1: rows that drop atoms go to Lawson–Hanson
    d = random_dictionary(d_in=24, d_sae=64, dtype=torch.float64, seed=3)
    gen = torch.Generator().manual_seed(4)
    n = 96
    x_target = d.target(sparse_signals(d, n, l0=10, noise=0.3, seed=5))
    sizes = torch.randint(1, 19, (n,), generator=gen)
    order = torch.rand(n, d.d_sae, generator=gen).argsort(dim=1)
    u = torch.zeros(n, d.d_sae, dtype=torch.float64)
    for r in range(n):
        u[r, order[r, : sizes[r]]] = torch.rand(int(sizes[r]), generator=gen, dtype=torch.float64) + 0.1
    ours = refit_codes(x_target, u, d).numpy()
    ref = scipy_refit(x_target.numpy(), u.numpy(), d.atoms.numpy())
    assert ((ref == 0) & (u.numpy() > 0)).sum() > 20  # NNLS dropped support atoms: the active set was exercised
    scale = np.abs(ref).max(axis=1, keepdims=True)
    assert np.abs(ours - ref).max() <= 1e-5 * scale.max()
    assert (np.abs(ours - ref) <= 1e-5 * scale).all()


def test_refit_of_a_lasso_mode_is_nnls_on_its_support_and_never_worse():
    d = random_dictionary(d_in=32, d_sae=128, dtype=torch.float64, seed=1)
    x = sparse_signals(d, 64, l0=6, noise=0.1, seed=2)
    plain = infer(x, d, "unamortized", lam=0.2)
    refit = infer(x, d, "unamortized", lam=0.2, refit=True)
    x_target = d.target(x)
    u_plain, u_refit = d.from_sae_codes(plain.codes), d.from_sae_codes(refit.codes)
    ref = scipy_refit(x_target.numpy(), u_plain.numpy(), d.atoms.numpy())
    np.testing.assert_allclose(u_refit.numpy(), ref, rtol=1e-5, atol=1e-7)
    err = lambda u: 0.5 * (x_target - u @ d.atoms).square().sum(dim=1)  # noqa: E731
    assert (err(u_refit) <= err(u_plain) + 1e-9).all() and (err(u_refit) < err(u_plain) - 1e-6).float().mean() > 0.9
    assert ((u_refit > 0) & (u_plain <= 0)).sum() == 0  # the support never grows
    assert plain.info["objective"] == "l1 lasso"
    assert refit.info["objective"] == "l2 (NNLS) on the mode's support" and refit.info["refit"]["of"] == "unamortized"
    lam_l1 = 0.2 * u_refit.sum(dim=1)
    torch.testing.assert_close(refit.objective.double(), err(u_refit) + lam_l1, rtol=1e-5, atol=1e-6)
    assert refit.codes.shape == plain.codes.shape and refit.mode == "unamortized" and refit.lam == 0.2


def test_padded_gram_is_the_fp64_gram_beside_an_identity_and_follows_the_atoms():
    """gram.padded_gram: [[AAᵀ, 0], [0, I]] in fp64 (checked against numpy), at least as many identity slots as asked,
    grown on demand, and rebuilt after the atoms change in place (a stale Gram would refit on old atoms)."""
    from saelens_amort.inference.gram import padded_gram

    d = random_dictionary(12, 40, seed=3)
    A = d.atoms.double().numpy()
    p = padded_gram(d, torch.float64, 5)
    m, P = 40, p.shape[0] - 40
    assert p.dtype == torch.float64 and P >= 5
    np.testing.assert_allclose(p[:m, :m].numpy(), A @ A.T, rtol=1e-12, atol=1e-12)
    assert torch.equal(p[m:, m:], torch.eye(P, dtype=torch.float64)) and not p[:m, m:].any() and not p[m:, :m].any()
    assert padded_gram(d, torch.float64, P) is p  # cached
    wider = padded_gram(d, torch.float64, P + 1)
    assert wider.shape[0] - m > P and torch.equal(wider[:m, :m], p[:m, :m])
    with torch.no_grad():
        d.atoms.mul_(2)
    np.testing.assert_allclose(padded_gram(d, torch.float64, 5)[:m, :m].numpy(), 4 * A @ A.T, rtol=1e-12)


def test_refit_of_a_bf16_sae_runs_in_fp32_and_equals_scipy_on_its_atoms():
    # CPU torch has no sparse bf16 products: the refit's residual must not ask for one
    import saelens_amort
    from helpers import toy_activations

    sae = saelens_amort.load_sae("toy/topk", dtype=torch.bfloat16)
    x = toy_activations(sae.cfg.metadata.hook_name)[:64].bfloat16()
    plain, refit = infer(x, sae, "amortized"), infer(x, sae, "amortized", refit=True)
    assert refit.codes.dtype == torch.bfloat16 and refit.info["refit"]["of"] == "amortized"
    from saelens_amort.saes import Dictionary

    dictionary = Dictionary.of(sae)
    x_target = dictionary.target(x).double()
    atoms = dictionary.atoms.double()
    u_plain = dictionary.from_sae_codes(plain.codes.float()).double()
    ref = scipy_refit(x_target.numpy(), u_plain.numpy(), atoms.numpy())
    u_refit = dictionary.from_sae_codes(refit.codes.float()).double().numpy()
    np.testing.assert_allclose(u_refit, ref, rtol=2e-2, atol=2e-2)  # bf16 codes: 8 bits of mantissa
