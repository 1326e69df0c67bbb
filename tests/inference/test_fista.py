"""Unamortized inference (working set, FISTA with restart, ISTA) against scikit-learn's non-negative lasso optimum."""

import numpy as np
import pytest
import torch
from helpers import random_dictionary, sparse_signals, toy_activations, torch_threads
from sklearn.linear_model import Lasso

import saelens_amort

from saelens_amort.inference import infer, objective
from saelens_amort.inference.fista import solve



@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield

def _sklearn_objective(dictionary, x, lam):
    """Our F at scikit-learn's optimum: Lasso minimises (1/(2·d_in))‖y − Xw‖² + α‖w‖₁, so α = λ/d_in."""
    X = dictionary.atoms.double().T.numpy()  # [d_in, d_sae]
    Y = dictionary.target(x).double().numpy()
    out = []
    for y in Y:
        model = Lasso(alpha=lam / X.shape[0], positive=True, fit_intercept=False, tol=1e-10, max_iter=100000)
        model.fit(X, y)
        w = model.coef_
        out.append(0.5 * np.sum((y - X @ w) ** 2) + lam * np.sum(np.abs(w)))
    return torch.tensor(out)


SOLVERS = ["working_set", "fista"]


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize(
    ("d_in", "d_sae", "lam", "seed"),
    [(64, 256, 0.05, 0), (64, 256, 0.3, 1), (80, 400, 0.1, 2), (96, 512, 1.0, 3)],
)
def test_unamortized_reaches_the_sklearn_optimum(d_in, d_sae, lam, seed, solver):
    d = random_dictionary(d_in, d_sae, seed=seed)
    x = sparse_signals(d, 6, l0=8, seed=seed)
    res = infer(x, d, "unamortized", lam=lam, tol=1e-9, steps=5000, solver=solver)
    assert res.info["solver"] == solver
    reference = _sklearn_objective(d, x, lam)
    torch.testing.assert_close(res.objective.double(), reference, rtol=1e-4, atol=0)
    assert (res.codes >= 0).all()
    # The reported objective is F at the returned codes, measured independently.
    u = d.from_sae_codes(res.codes)
    torch.testing.assert_close(res.objective, objective(d.target(x), u, d, lam), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("solver", SOLVERS)
def test_float64_dictionaries_solve_in_float64(solver):
    d = random_dictionary(64, 256, seed=4, dtype=torch.float64)
    x = sparse_signals(d, 4, seed=4)
    res = infer(x, d, lam=0.2, tol=1e-12, steps=5000, solver=solver)
    assert res.codes.dtype == torch.float64 and res.objective.dtype == torch.float32
    torch.testing.assert_close(res.objective.double(), _sklearn_objective(d, x, 0.2), rtol=1e-5, atol=0)


@pytest.mark.parametrize("solver", ["ista", "fista"])
def test_objective_never_increases(solver):
    d = random_dictionary(64, 256, seed=5)
    x = sparse_signals(d, 8, seed=5)
    res = infer(x, d, lam=0.1, solver=solver, tol=0, steps=300, return_trace=True)
    trace = res.info["trace"]
    assert trace.shape[1] == 8 and 2 < trace.shape[0] <= 301  # rows that stop changing stop
    assert (trace[1:] <= trace[:-1]).all()
    assert torch.equal(trace[-1], res.objective)


def test_fista_and_ista_reach_the_same_optimum_fista_sooner():
    d = random_dictionary(64, 256, seed=6)
    x = sparse_signals(d, 8, seed=6)
    ista = infer(x, d, lam=0.1, solver="ista", tol=1e-9, steps=20000)
    fista = infer(x, d, lam=0.1, solver="fista", tol=1e-9, steps=20000)
    gradient = infer(x, d, lam=0.1, solver="fista", restart="gradient", tol=1e-9, steps=20000)
    working_set = infer(x, d, lam=0.1, tol=1e-9, steps=20000)
    torch.testing.assert_close(fista.objective, ista.objective, rtol=1e-5, atol=0)
    torch.testing.assert_close(gradient.objective, ista.objective, rtol=1e-5, atol=0)
    torch.testing.assert_close(working_set.objective, ista.objective, rtol=1e-5, atol=0)
    # At equal iteration counts FISTA is ahead.
    ista_50 = infer(x, d, lam=0.1, solver="ista", tol=0, steps=50)
    fista_50 = infer(x, d, lam=0.1, solver="fista", tol=0, steps=50)
    gap = lambda r: (r.objective - ista.objective).mean()  # noqa: E731
    assert gap(fista_50) < 0.1 * gap(ista_50)


@pytest.mark.parametrize("solver", SOLVERS)
def test_rows_stop_on_their_own(solver):
    d = random_dictionary(64, 256, seed=7)
    x = sparse_signals(d, 6, seed=7)
    x[:2] = d.bias  # x' = 0: the optimum is u = 0 (FISTA finds it at its first step; the certificate at the start)
    res = infer(x, d, lam=0.1, steps=200, solver=solver)
    first = 1 if solver == "fista" else 0
    assert (res.n_iter[:2] == first).all() and (res.codes[:2] == 0).all() and res.converged[:2].all()
    assert (res.n_iter[2:] > 1).all()
    assert res.converged.all() if solver == "working_set" else res.converged[:2].all()  # FISTA: its gap decides
    # Large λ (≥ max x'Aᵀ) gives u = 0 everywhere.
    lam_max = float((d.target(x) @ d.atoms.T).max())
    assert (infer(x, d, lam=lam_max * 1.01, solver=solver).codes == 0).all()


@pytest.mark.parametrize("solver", SOLVERS)
def test_chunking_and_warm_start(solver):
    d = random_dictionary(64, 256, seed=8)
    x = sparse_signals(d, 10, seed=8)
    whole = infer(x, d, lam=0.1, tol=1e-7, steps=2000, solver=solver)
    chunked = infer(x, d, lam=0.1, tol=1e-7, steps=2000, batch_rows=3, solver=solver)
    torch.testing.assert_close(chunked.objective, whole.objective, rtol=1e-5, atol=0)
    warm = infer(x, d, lam=0.1, tol=1e-6, init=whole.codes, solver=solver)
    assert (warm.n_iter <= 3).all()
    torch.testing.assert_close(warm.objective, whole.objective, rtol=1e-5, atol=0)


def test_solver_is_gram_free_and_batched():
    """`solve` works on unit atoms directly; non-unit atoms in the dictionary show up only as a code rescaling."""
    d = random_dictionary(64, 256, seed=9)
    x = sparse_signals(d, 5, seed=9)
    out = solve(d.target(x), d.atoms, 0.1, d.lipschitz, tol=1e-8, max_iter=3000)
    res = infer(x, d, lam=0.1, tol=1e-8, steps=3000, solver="fista")
    torch.testing.assert_close(d.to_sae_codes(out.u), res.codes)
    torch.testing.assert_close(out.objective.float(), res.objective)


@pytest.mark.parametrize("solver", ["ista", "fista"])
def test_dense_solvers_step_is_one_over_sigma_max_squared(solver):
    """Unit atoms, d_sae = 8·d_in: σ_max ≈ 3.8, so a step 1/σ_max is ~4× too long and every step is rejected; with
    1/σ_max² the solvers reach scikit-learn's optimum."""
    d = random_dictionary(32, 256, seed=21, unit=True)
    sigma = float(np.linalg.norm(d.atoms.double().numpy(), 2))
    assert sigma > 2 and d.lipschitz == pytest.approx(sigma**2, rel=1e-4)
    x = sparse_signals(d, 4, l0=4, seed=21)
    res = infer(x, d, lam=0.1, solver=solver, tol=1e-9, steps=5000)
    torch.testing.assert_close(res.objective.double(), _sklearn_objective(d, x, 0.1), rtol=1e-5, atol=0)


def test_dense_converged_flag_is_the_duality_gap_not_the_stopping_rule():
    """On a trained decoder, FISTA's relative-change stop fires above the optimum: those rows must not claim
    convergence; rows that do are within tol of the certified working-set optimum."""
    sae = saelens_amort.load_sae("toy/standard")
    x = toy_activations(sae.cfg.metadata.hook_name)[:128]
    ref = infer(x, sae, lam=0.71, tol=1e-6, steps=5000)
    assert ref.converged.all()
    for solver, steps in (("fista", 200), ("ista", 200), ("fista", 3)):
        res = infer(x, sae, lam=0.71, solver=solver, steps=steps)
        excess = res.objective.double() / ref.objective.double() - 1
        assert (excess[res.converged] <= 1e-4).all()
        assert not res.converged[excess > 1.1e-4].any()
    assert not res.converged.any()  # 3 steps from zero
