"""Non-negative OMP: exact recovery, monotone residual, non-negativity, NNLS refits, sklearn equivalence, bad input."""

import math

import numpy as np
import pytest
import torch

from saelens_amort.errors import SaeAmortError
from saelens_amort.inference import get_mode, infer, list_modes, objective
from saelens_amort.inference.omp import nn_omp, omp_mode
from saelens_amort.inference.result import ModeOptions
from saelens_amort.saes.dictionary import Dictionary
from saelens_amort.synthetic import make_problem


def residual_norms(problem, codes):
    return (problem.x - codes @ problem.dictionary.atoms).norm(dim=1)


@pytest.fixture(scope="module")
def exact():
    return make_problem(1024, 64, 256, 4, seed=0)


@pytest.fixture(scope="module")
def noisy():
    return make_problem(256, 64, 256, 8, seed=2, noise=0.1, dtype=torch.float64)


def test_registered_as_k_sparse_mode_without_lambda():
    assert "omp" in list_modes()
    spec = get_mode("omp")
    assert spec.needs_k and not spec.needs_lambda and not spec.needs_sae


def test_recovers_exact_supports_and_codes_on_incoherent_atoms(exact):
    result = infer(exact.x, exact.dictionary, "omp", k=4)
    same_support = ((result.codes > 0) == (exact.codes > 0)).all(dim=1)
    assert same_support.float().mean() >= 0.99
    assert (result.codes[same_support] - exact.codes[same_support]).abs().max() < 1e-4
    assert result.n_iter.eq(4).all() and result.converged.all()
    assert result.objective.isnan().all() and result.lam is None  # no λ given: objective unknown
    assert result.mode == "omp" and result.info["atoms_dropped"] == 0
    assert result.info["objective"] == "l2 by greedy selection (non-negative OMP, k atoms)"  # eval's objective column
    assert infer(exact.x, exact.dictionary, "mp", k=4).info["objective"].startswith("l2 by greedy steps")


def test_gram_and_direct_paths_agree(exact):
    A = exact.dictionary.atoms
    direct = nn_omp(exact.x[:256], A, 4)
    with_gram = nn_omp(exact.x[:256], A, 4, gram=A @ A.T)
    torch.testing.assert_close(direct.u, with_gram.u, atol=1e-5, rtol=0)
    assert torch.equal(direct.n_iter, with_gram.n_iter)


def test_gram_path_switching_to_the_residual_for_wide_supports_agrees_with_the_direct_path(noisy):
    A, x = noisy.dictionary.atoms, noisy.x[:128]
    direct = nn_omp(x, A, 20)
    with_gram = nn_omp(x, A, 20, gram=A @ A.T)  # supports past d_in / GRAM_SUPPORT_RATIO = 8 atoms use rAᵀ
    torch.testing.assert_close(direct.u, with_gram.u, atol=1e-9, rtol=0)
    assert torch.equal(direct.n_iter, with_gram.n_iter) and int(direct.n_iter.max()) > 8


def test_stops_early_once_the_residual_vanishes(exact):
    result = infer(exact.x[:256], exact.dictionary, "omp", k=12)
    assert result.n_iter.eq(4).float().mean() >= 0.99
    assert ((result.codes > 0) == (exact.codes[:256] > 0)).all(dim=1).float().mean() >= 0.99
    assert result.info["stopped_early"] == int((result.n_iter < 12).sum())


def test_residual_non_increasing_in_k(noisy):
    previous = residual_norms(noisy, torch.zeros_like(noisy.codes))
    for k in (1, 2, 4, 8, 16, 32, 48):
        norms = residual_norms(noisy, infer(noisy.x, noisy.dictionary, "omp", k=k).codes)
        assert (norms <= previous + 1e-10).all(), k
        previous = norms


def test_codes_non_negative_and_refit_is_least_squares_on_the_support(noisy):
    result = infer(noisy.x, noisy.dictionary, "omp", k=48)
    assert result.info["atoms_dropped"] > 0  # the NNLS (Lawson–Hanson) refit was exercised
    u = result.codes
    assert (u >= 0).all()
    assert ((u > 0).sum(dim=1) <= result.n_iter).all() and (result.n_iter <= 48).all()
    # NNLS optimum on the final support: the residual is orthogonal to every atom in use
    corr = (noisy.x - u @ noisy.dictionary.atoms) @ noisy.dictionary.atoms.T
    assert corr[u > 0].abs().max() < 1e-9


def test_storage_left_uninitialised_is_never_read(noisy, monkeypatch):
    """The factor and Gram tables start uninitialised (torch.empty): filled with NaN instead, nothing changes."""
    A, x = noisy.dictionary.atoms, noisy.x
    clean = nn_omp(x, A, 48, prefix=torch.full((x.shape[0],), 20))
    empty = torch.empty

    def nan_empty(*args, **kwargs):
        out = empty(*args, **kwargs)
        return out.fill_(math.nan) if out.is_floating_point() else out

    monkeypatch.setattr(torch, "empty", nan_empty)
    poisoned = nn_omp(x, A, 48, prefix=torch.full((x.shape[0],), 20))
    assert clean.atoms_dropped > 0  # the refits (which refactor from the Gram table) ran
    assert torch.equal(clean.u, poisoned.u) and torch.equal(clean.u_prefix, poisoned.u_prefix)


def test_matches_sklearn_omp_where_its_solution_is_non_negative(noisy):
    from sklearn.linear_model import orthogonal_mp

    A = noisy.dictionary.atoms
    ours = infer(noisy.x, noisy.dictionary, "omp", k=8).codes.numpy()
    ref = orthogonal_mp(A.numpy().T, noisy.x.numpy().T, n_nonzero_coefs=8).T
    non_negative = (ref >= 0).all(axis=1)
    assert non_negative.mean() > 0.8
    same = np.abs(ours - ref).max(axis=1) < 1e-8
    assert same[non_negative].mean() >= 0.99


def test_codes_live_in_sae_code_space_and_objective_uses_lambda(exact):
    norms = torch.linspace(0.5, 2.0, exact.dictionary.d_sae)
    bias = torch.full((exact.dictionary.d_in,), 0.3)
    scaled = Dictionary.from_matrix(exact.dictionary.atoms * norms[:, None], bias)
    x = exact.x[:128] + bias
    result = infer(x, scaled, "omp", k=4, lam=0.1)
    torch.testing.assert_close(result.codes * norms, exact.codes[:128], atol=1e-4, rtol=0)
    u = scaled.from_sae_codes(result.codes)
    torch.testing.assert_close(result.objective, objective(scaled.target(x), u, scaled, 0.1), atol=1e-5, rtol=1e-5)
    assert result.lam == 0.1


def test_rows_without_positive_correlation_or_signal_get_zero_codes():
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(0)))
    ortho = Dictionary.from_matrix(q.T.contiguous())
    x = torch.stack([-ortho.atoms[0] - ortho.atoms[3], torch.zeros(16), 2 * ortho.atoms[5]])
    result = infer(x, ortho, "omp", k=3)
    assert result.n_iter.tolist() == [0, 0, 1]
    assert result.codes[:2].eq(0).all()
    assert math.isclose(float(result.codes[2, 5]), 2.0, rel_tol=1e-5)


def test_batch_rows_chunking_changes_nothing(exact):
    whole = infer(exact.x[:300], exact.dictionary, "omp", k=4)
    chunked = infer(exact.x[:300], exact.dictionary, "omp", k=4, batch_rows=64)
    torch.testing.assert_close(whole.codes, chunked.codes)


def test_lower_precision_dictionaries_solve_in_fp32(exact):
    half = Dictionary.from_matrix(exact.dictionary.atoms.to(torch.bfloat16))
    result = infer(exact.x[:64].to(torch.bfloat16), half, "omp", k=4)
    assert result.codes.dtype == torch.bfloat16 and result.objective.dtype == torch.float32
    assert (result.codes >= 0).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 0}, "k must be"),
        ({"k": 257}, "exceeds"),
        ({"k": 4, "init": "encoder"}, "starts from u = 0"),
        ({"k": 4, "batch_rows": 0}, "batch_rows"),
        ({"k": 4, "max_atoms": 3}, "does not take"),
        ({}, "needs k"),
    ],
)
def test_bad_inputs_raise_one_line_errors(exact, kwargs, message):
    with pytest.raises(SaeAmortError, match=message) as err:
        infer(exact.x[:8], exact.dictionary, "omp", **kwargs)
    assert "\n" not in str(err.value)


def test_mode_function_validates_k_itself(exact):
    with pytest.raises(SaeAmortError, match="needs k"):
        omp_mode(exact.x[:4], exact.dictionary, ModeOptions())
    with pytest.raises(SaeAmortError, match=r"\[1, d_sae=256\]"):
        omp_mode(exact.x[:4], exact.dictionary, ModeOptions(k=300))


@pytest.mark.parametrize("k, prefix", [(8, 4), (48, 20)])
def test_compiled_path_equals_the_batched_one(noisy, k, prefix):
    """The one-row-at-a-time kernel (the modes' CPU path) against the batched steps: codes, the codes after `prefix`
    selections, selections and dropped atoms (k = 48 runs Lawson–Hanson refits), per-row budgets included."""
    A, x = noisy.dictionary.atoms, noisy.x
    G = A @ A.T
    k_rows = torch.randint(1, k + 1, (x.shape[0],), generator=torch.Generator().manual_seed(0))
    pre = torch.minimum(k_rows, torch.tensor(prefix))
    batched = nn_omp(x, A, k, gram=G, k_rows=k_rows, prefix=pre)
    compiled = nn_omp(x, A, k, gram=G, k_rows=k_rows, prefix=pre, compiled=True)
    torch.testing.assert_close(compiled.u, batched.u, atol=1e-9, rtol=0)
    torch.testing.assert_close(compiled.u_prefix, batched.u_prefix, atol=1e-9, rtol=0)
    torch.testing.assert_close(compiled.residual, batched.residual, atol=1e-9, rtol=0)
    assert torch.equal(compiled.n_iter, batched.n_iter) and compiled.atoms_dropped == batched.atoms_dropped
    if k == 48:
        assert batched.atoms_dropped > 0


def test_modes_run_compiled_on_the_cpu_and_agree_with_the_batched_path(noisy, monkeypatch):
    from saelens_amort.inference import active_set
    from saelens_amort.inference import omp as omp_module

    assert omp_module.pursuit_gram(noisy.dictionary, 256, 8)[1] is True
    compiled = infer(noisy.x, noisy.dictionary, "omp", k=24)
    monkeypatch.setattr(active_set, "MAX_GRAM_BYTES", 0)
    assert omp_module.pursuit_gram(noisy.dictionary, 256, 8)[1] is False
    batched = infer(noisy.x, noisy.dictionary, "omp", k=24)
    torch.testing.assert_close(compiled.codes, batched.codes, atol=1e-9, rtol=0)
    assert compiled.info["atoms_dropped"] == batched.info["atoms_dropped"]
