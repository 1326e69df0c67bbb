"""The compiled active-set solver (unamortized's CPU default): scikit-learn's optimum, its Cholesky downdate, atoms
dependent on the support, warm starts, its budget, and the rows it hands on to the working-set solver."""

import numpy as np
import pytest
import torch
from helpers import random_dictionary, sklearn_lasso_objective, sparse_signals, torch_threads, toy_activations

import saelens_amort
from saelens_amort.inference import active_set, infer, objective
from saelens_amort.inference import gram as gram_cache
from saelens_amort.inference.cholesky_kernels import append as _append, remove as _remove
from saelens_amort.saes.dictionary import Dictionary


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def _sklearn_objective(dictionary, x, lam):
    return sklearn_lasso_objective(dictionary, x, lam, tol=1e-12, max_iter=200000)


def test_reaches_the_sklearn_optimum_and_reports_f_at_its_codes():
    d = random_dictionary(48, 300, seed=21)
    x = sparse_signals(d, 12, l0=10, seed=21)
    res = infer(x, d, lam=0.05, tol=1e-8, steps=5000)
    assert res.info["solver"] == "active_set" and res.info["gram"] is True
    assert res.converged.all() and (res.codes >= 0).all()
    torch.testing.assert_close(res.objective.double(), _sklearn_objective(d, x, 0.05), rtol=1e-6, atol=0)
    u = d.from_sae_codes(res.codes)
    torch.testing.assert_close(res.objective, objective(d.target(x), u, d, 0.05), rtol=1e-5, atol=1e-6)
    # Counted FLOPs: the one product x'Aᵀ as a product, the kernel's loops (gradients, factor updates) besides.
    assert (res.info["flops_matmul"] == 2.0 * 48 * 300).all()
    assert (res.info["flops"] > res.info["flops_matmul"] + 2.0 * 300 * (res.codes > 0).sum(1)).all()


def test_rows_are_solved_independently_of_their_batch():
    """One row at a time: the codes of a row do not depend on what else is in the batch (equal across --workers)."""
    d = random_dictionary(32, 128, seed=22)
    x = sparse_signals(d, 9, l0=6, seed=22)
    whole = infer(x, d, lam=0.1)
    alone = torch.cat([infer(x[i : i + 1], d, lam=0.1).codes for i in range(9)])
    assert torch.equal(whole.codes, alone)


def test_downdate_equals_a_fresh_factor_of_the_smaller_face():
    gen = torch.Generator().manual_seed(3)
    A = torch.randn(9, 12, generator=gen, dtype=torch.float64)
    G = (A @ A.T).numpy()
    k, cap = 9, 12
    L = np.zeros((cap, cap))
    S = np.arange(cap, dtype=np.int64)
    for j in range(k):
        assert _append(L, S, j, G, j, 1e-10)
    for p in (0, 4, 8):
        L2, S2, uS = L.copy(), S.copy(), np.arange(cap, dtype=np.float64)
        _remove(L2, S2, uS, k, p)
        keep = [j for j in range(k) if j != p]
        assert list(S2[: k - 1]) == keep and list(uS[: k - 1]) == [float(j) for j in keep]
        np.testing.assert_allclose(np.tril(L2[: k - 1, : k - 1]), np.linalg.cholesky(G[np.ix_(keep, keep)]),
                                   rtol=1e-10, atol=1e-12)


def test_an_atom_dependent_on_the_support_is_left_out():
    """Atoms 0 and 1 are equal: the face with both is singular. The row still reaches the optimum (one copy)."""
    gen = torch.Generator().manual_seed(4)
    atoms = torch.randn(40, 24, generator=gen, dtype=torch.float64)
    atoms[1] = atoms[0]
    atoms = atoms / atoms.norm(dim=1, keepdim=True)
    d = Dictionary.from_matrix(atoms.float())
    x = (3 * atoms[0] + 1.5 * atoms[5] + 0.01 * torch.randn(24, generator=gen, dtype=torch.float64)).float()[None]
    res = infer(x, d, lam=0.05, tol=1e-9)
    assert res.converged.all()
    assert int(((res.codes[0, :2] > 0)).sum()) == 1
    torch.testing.assert_close(res.objective.double(), _sklearn_objective(d, x, 0.05), rtol=1e-7, atol=0)


def test_warm_starts_reach_the_same_optimum():
    d = random_dictionary(32, 128, seed=23)
    x = sparse_signals(d, 10, l0=6, seed=23)
    gram64 = gram_cache.atom_gram(d, torch.float64)
    cold = active_set.solve_active_set(d.target(x), d.atoms, 0.1, gram64, tol=1e-9)
    near = active_set.solve_active_set(d.target(x), d.atoms, 0.1, gram64, u0=1.01 * cold.u, tol=1e-9)
    wide = torch.rand(10, 128, generator=torch.Generator().manual_seed(1)) * 2
    far = active_set.solve_active_set(d.target(x), d.atoms, 0.1, gram64, u0=wide, tol=1e-9)
    for out in (near, far):
        assert out.converged.all()
        torch.testing.assert_close(out.objective, cold.objective, rtol=1e-8, atol=0)
    assert (near.n_iter <= cold.n_iter).all() and near.n_iter.sum() < cold.n_iter.sum()


@pytest.mark.parametrize("steps", [1, 2, 3, 5, 8])
def test_budget_caps_face_solves(steps):
    """A trained, coherent dictionary (toy/gated): its rows drop atoms inside rounds, where the budget must hold too."""
    sae = saelens_amort.load_sae("toy/gated")
    x = toy_activations(sae.cfg.metadata.hook_name)[:64]
    res = infer(x, sae, lam=0.67, steps=steps)
    assert res.info["solver"] == "active_set"
    assert (res.n_iter <= steps).all() and (res.n_iter[~res.converged] == steps).all() and not res.converged.all()


def test_rows_it_cannot_finish_go_on_in_the_working_set_solver(monkeypatch):
    """With room for two atoms a row stops short of its certificate: the working-set solver finishes it."""
    d = random_dictionary(48, 300, seed=25)
    x = sparse_signals(d, 6, l0=10, seed=25)
    monkeypatch.setattr(active_set, "MAX_SUPPORT", 2)
    res = infer(x, d, lam=0.05, tol=1e-8, steps=5000)
    assert res.info["solver"] == "active_set" and res.converged.all()
    torch.testing.assert_close(res.objective.double(), _sklearn_objective(d, x, 0.05), rtol=1e-6, atol=0)


def test_wide_dictionaries_and_traces_run_the_working_set_solver(monkeypatch):
    d = random_dictionary(16, 64, seed=26)
    x = sparse_signals(d, 3, l0=3, seed=26)
    assert infer(x, d, lam=0.1, return_trace=True).info["solver"] == "working_set"
    monkeypatch.setattr(active_set, "MAX_GRAM_BYTES", 64 * 64 * 8 - 1)
    assert infer(x, d, lam=0.1).info["solver"] == "working_set"
