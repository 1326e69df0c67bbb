"""k-sparse modes: best-subset optimum on tiny problems, monotone steps, the encoder's own per-row L0 on real toy
SAEs (never worse than the encoder, decodable by sae.decode), per-row k, bad k."""

import itertools

import numpy as np
import pytest
import torch
from helpers import random_dictionary, sparse_signals, torch_threads, toy_activations
from scipy.optimize import nnls as scipy_nnls

import saelens_amort
from saelens_amort.errors import SaeAmortError
from saelens_amort.inference import get_mode, infer, list_modes
from saelens_amort.saes.dictionary import Dictionary


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def half_sq_error(x_target, u, atoms):
    return 0.5 * (x_target - u @ atoms).square().sum(dim=1)


def test_registered_without_lambda_semi_needs_the_encoder():
    assert {"ksparse", "semi_ksparse"} <= set(list_modes())
    assert not get_mode("ksparse").needs_lambda and not get_mode("ksparse").needs_sae
    assert not get_mode("semi_ksparse").needs_lambda and get_mode("semi_ksparse").needs_sae


def test_finds_the_exhaustive_best_subset_on_tiny_problems():
    """d = 8, m = 16, k = 2: the optimum over all 120 supports (scipy NNLS on each) on ≥ 95 % of rows."""
    d, m, k, n = 8, 16, 2, 200
    gen = torch.Generator().manual_seed(0)
    D = torch.randn(m, d, generator=gen, dtype=torch.float64)
    dictionary = Dictionary.from_matrix(D / D.norm(dim=1, keepdim=True))
    atoms = dictionary.atoms
    support = torch.rand(n, m, generator=gen).argsort(dim=1)[:, :k]
    codes = torch.zeros(n, m, dtype=torch.float64).scatter_(1, support, 0.5 + torch.rand(n, k, generator=gen).double())
    x = codes @ atoms + 0.05 * torch.randn(n, d, generator=gen, dtype=torch.float64)
    A, X = atoms.numpy(), x.numpy()
    best = np.array([min(0.5 * scipy_nnls(A[list(s)].T, row)[1] ** 2 for s in itertools.combinations(range(m), k))
                     for row in X])
    result = infer(x, dictionary, "ksparse", k=k, starts=4)
    err = half_sq_error(x, result.codes, atoms).numpy()
    assert (err >= best * (1 - 1e-9) - 1e-12).all()  # nothing beats the exhaustive optimum
    assert np.mean(err <= best * (1 + 1e-6) + 1e-12) >= 0.95
    assert ((result.codes > 0).sum(dim=1) <= k).all() and (result.codes >= 0).all()
    assert result.info["objective"] == "l2 at fixed per-row L0" and result.info["starts"] == 4


def test_steps_never_raise_the_error_from_any_start():
    d = random_dictionary(d_in=32, d_sae=256, seed=2)
    x = sparse_signals(d, 128, l0=12, noise=0.2, seed=3)
    gen = torch.Generator().manual_seed(5)
    k = 6
    support = torch.rand(128, d.d_sae, generator=gen).argsort(dim=1)[:, :k]
    init = torch.zeros(128, d.d_sae).scatter_(1, support, torch.rand(128, k, generator=gen) + 0.1)
    x_target = d.target(x)
    before = half_sq_error(x_target, d.from_sae_codes(init), d.atoms)
    for steps in (1, 2, 5, 50):
        result = infer(x, d, "ksparse", k=k, init=init, steps=steps)
        after = half_sq_error(x_target, d.from_sae_codes(result.codes), d.atoms)
        assert (after <= before * (1 + 1e-6)).all(), steps
    assert ((result.codes > 0).sum(dim=1) == k).all()
    assert result.converged.float().mean() > 0.9


@pytest.fixture(scope="module")
def toy_x():
    return toy_activations()[:256]


@pytest.mark.parametrize("family", ["topk", "batchtopk", "jumprelu"])
def test_semi_keeps_the_encoder_l0_per_row_and_never_reconstructs_worse(family, toy_x):
    sae = saelens_amort.load_sae(f"toy/{family}")
    with torch.no_grad():
        z_enc = sae.encode(toy_x)
        err_enc = 0.5 * (toy_x - sae.decode(z_enc)).square().sum(dim=1)
        result = infer(toy_x, sae, "semi_ksparse")
        err = 0.5 * (toy_x - sae.decode(result.codes)).square().sum(dim=1)  # codes in the SAE's own code space
    assert torch.equal((result.codes > 0).sum(dim=1), (z_enc > 0).sum(dim=1))
    assert (err <= err_enc * (1 + 1e-5) + 1e-6).all()
    assert err.sum() < 0.9 * err_enc.sum()
    assert result.info["k"]["source"] == "encoder per-row L0" and result.info["objective"] == "l2 at fixed per-row L0"


def test_semi_starts_from_the_encoder_code_refitted_on_its_support_and_takes_five_steps(toy_x):
    """steps=0 gives the start: the encoder's support exactly, its magnitudes refitted (without the polish it would be
    the encoder's code itself); the default budget is 5 steps."""
    sae = saelens_amort.load_sae("toy/topk")
    with torch.no_grad():
        z_enc = sae.encode(toy_x)
        err_enc = 0.5 * (toy_x - sae.decode(z_enc)).square().sum(dim=1)
        start = infer(toy_x, sae, "semi_ksparse", steps=0)
        err = 0.5 * (toy_x - sae.decode(start.codes)).square().sum(dim=1)
        default = infer(toy_x, sae, "semi_ksparse")
    assert torch.equal(start.codes > 0, z_enc > 0)
    assert (err <= err_enc * (1 + 1e-5) + 1e-6).all() and err.sum() < 0.8 * err_enc.sum()
    assert default.info["max_iter"] == 5 and 1 <= int(default.n_iter.max()) <= 5


def test_rows_with_k_at_least_d_in_start_at_the_safe_step():
    """k_r ≥ d_in (no polish): the first step is 1/L, which cannot raise the error, so none is rejected (from
    MAX_STEP / L most first steps were)."""
    d = random_dictionary(d_in=8, d_sae=32, seed=9)
    x = sparse_signals(d, 64, l0=12, noise=0.1, seed=10)
    init = torch.rand(64, 32, generator=torch.Generator().manual_seed(11))
    result = infer(x, d, "ksparse", k=12, init=init, steps=1)
    assert result.info["rejected_steps"] == 0 and (result.n_iter == 1).all()


def test_rows_whose_residual_is_explained_stop_converged(toy_x):
    """x' in the cone of k_r ≥ d_in atoms: OMP's start explains it to rounding, so the row takes no step and counts as
    converged (before, such rows ran all 100 iterations with supports flickering in the last digits and were
    reported unconverged: toy/gated's BOS-like rows at k_r 160 of d_in 128)."""
    d = random_dictionary(d_in=8, d_sae=32, seed=9)
    x = sparse_signals(d, 64, l0=12, noise=0.0, seed=10)
    result = infer(x, d, "ksparse", k=12)
    err = half_sq_error(d.target(x), d.from_sae_codes(result.codes), d.atoms)
    assert result.converged.all() and (result.n_iter == 0).all()
    assert (err <= 16 * torch.finfo(torch.float32).eps * d.target(x).square().sum(dim=1)).all()
    sae = saelens_amort.load_sae("toy/gated")
    with torch.no_grad():
        wide = ((sae.encode(toy_x) > 0).sum(dim=1) >= sae.cfg.d_in).nonzero().squeeze(1)
        assert wide.numel() > 0
        gated = infer(toy_x[wide], sae, "ksparse")
    assert gated.converged.all() and (gated.n_iter < 10).all()


@pytest.mark.parametrize("compiled", [True, False])
def test_a_code_least_squares_on_a_support_the_step_keeps_is_not_polished_again(toy_x, monkeypatch, compiled):
    """From converged codes, polished on their supports at the start, the first step keeps every support: those rows
    are at a fixed point and stop without polishing again (the step's polish and residual would return the same
    code). The codes stay the converged ones. (The batched path's polishes are counted; both paths' results held.)"""
    import saelens_amort.inference.active_set as active_set
    import saelens_amort.inference.ksparse_solver as ks

    if not compiled:
        monkeypatch.setattr(active_set, "MAX_GRAM_BYTES", 0)
    sae = saelens_amort.load_sae("toy/gated")
    with torch.no_grad():
        done = infer(toy_x, sae, "ksparse")
        polished = []
        real = ks._polish
        monkeypatch.setattr(ks, "_polish", lambda systems, rows, *a: polished.append(len(rows)) or real(systems, rows, *a))
        again = infer(toy_x, sae, "ksparse", init=done.codes, k_rows=(done.codes > 0).sum(dim=1))
    assert sum(polished) == (0 if compiled else len(toy_x))  # the start's polish only (per block of similar k)
    assert again.converged.all() and (again.n_iter <= 1).all()
    assert torch.allclose(again.codes, done.codes, atol=1e-3)


def test_unamortized_matches_the_encoder_l0_and_beats_omp_at_it(toy_x):
    sae = saelens_amort.load_sae("toy/topk")
    with torch.no_grad():
        l0 = (sae.encode(toy_x) > 0).sum(dim=1)
        result = infer(toy_x, sae, "ksparse")
        omp = infer(toy_x, sae, "omp", k=int(l0[0]))
        err, err_omp = (0.5 * (toy_x - sae.decode(r.codes)).square().sum(dim=1) for r in (result, omp))
    assert torch.equal((result.codes > 0).sum(dim=1), l0)
    assert (err <= err_omp * (1 + 1e-5) + 1e-6).all()  # OMP is its start


def test_per_row_k_and_leading_shape():
    d = random_dictionary(d_in=32, d_sae=128, seed=4)
    x = sparse_signals(d, 24, l0=10, seed=6).reshape(4, 6, 32)
    k = torch.arange(1, 25).reshape(4, 6) % 9 + 1
    result = infer(x, d, "ksparse", k=k)
    assert result.codes.shape == (4, 6, 128)
    assert torch.equal((result.codes > 0).sum(dim=-1), k)
    assert torch.equal(result.info["k_rows"], k.reshape(-1)) and result.info["k"]["source"] == "given per row"


@pytest.mark.parametrize("starts", [1, 3])
def test_a_rows_code_does_not_depend_on_the_rest_of_its_batch(starts):
    """Rows of k 3 solved alone equal the same rows solved beside rows of k 6 (one block spans both): the OMP start
    runs each row to its own k, not to the block's widest."""
    d = random_dictionary(d_in=32, d_sae=128, dtype=torch.float64, seed=7)
    x = sparse_signals(d, 40, l0=8, noise=0.05, seed=8)
    k = torch.tensor([3, 6] * 20)
    mixed = infer(x, d, "ksparse", k=k, starts=starts)
    alone = infer(x[k == 3], d, "ksparse", k=3, starts=starts)
    torch.testing.assert_close(mixed.codes[k == 3], alone.codes, rtol=1e-9, atol=1e-12)
    assert torch.equal((mixed.codes > 0).sum(dim=1), k)


@pytest.mark.parametrize(
    ("k", "message"),
    [
        (0, "k must be a positive integer"),
        (-2, "k must be a positive integer"),
        (129, "exceeds the dictionary size"),
        (torch.tensor([1, 0, 2]), r"every k must be in \[1, d_sae=128\]"),
        (torch.tensor([1, 129, 2]), r"every k must be in \[1, d_sae=128\]"),
        (torch.tensor([1, 2]), "per-row k has shape"),
        (torch.tensor([1.0, 2.0, 3.0]), "integer tensor"),
    ],
)
def test_bad_k_is_one_clear_error(k, message):
    d = random_dictionary(d_in=32, d_sae=128)
    x = sparse_signals(d, 3)
    with pytest.raises(SaeAmortError, match=message) as err:
        infer(x, d, "ksparse", k=k)
    assert "\n" not in str(err.value)


def test_default_k_needs_the_encoder_and_per_row_k_needs_a_ksparse_mode():
    d = random_dictionary(d_in=32, d_sae=128)
    x = sparse_signals(d, 3)
    with pytest.raises(SaeAmortError, match="needs the SAE's encoder"):
        infer(x, d, "ksparse")
    with pytest.raises(SaeAmortError, match="per-row k is for the ksparse modes"):
        infer(x, d, "omp", k=torch.tensor([1, 2, 3]))


def test_usable_through_the_saebench_adapter_with_refit(toy_x):
    bench = pytest.importorskip("saelens_amort.bench")
    if not bench.HAVE_SAEBENCH:
        pytest.skip("pip install --no-deps sae-bench==0.6.0")
    sae = saelens_amort.load_sae("toy/batchtopk")
    adapter = bench.as_saebench_sae(sae, "semi_ksparse", refit=True)
    x = toy_x[:64]
    with torch.no_grad():
        direct = infer(x, sae, "semi_ksparse", refit=True)
        torch.testing.assert_close(adapter.encode(x), direct.codes * sae.W_dec.norm(dim=1), atol=1e-5, rtol=1e-5)
        err_enc = (x - sae.decode(sae.encode(x))).square().sum()
        assert (x - adapter(x)).square().sum() < err_enc
    assert direct.info["objective"] == "l2 (NNLS) on the mode's support" and direct.info["refit"]["of"] == "semi_ksparse"


@pytest.mark.parametrize("family", ["gated", "topk", "jumprelu"])
@pytest.mark.parametrize("mode", ["ksparse", "semi_ksparse"])
def test_compiled_and_batched_paths_agree(toy_x, monkeypatch, family, mode):
    """The modes' CPU path runs each row in compiled fp64 loops; the batched path (CUDA, wide dictionaries) takes the
    same steps in fp32: the same codes but for rows where rounding tips a near-tie, the same errors."""
    import saelens_amort.inference.active_set as active_set

    sae = saelens_amort.load_sae(f"toy/{family}")
    with torch.no_grad():
        compiled = infer(toy_x, sae, mode)
        monkeypatch.setattr(active_set, "MAX_GRAM_BYTES", 0)
        batched = infer(toy_x, sae, mode)
        err_c, err_b = (0.5 * (toy_x - sae.decode(r.codes)).square().sum(dim=1).double() for r in (compiled, batched))
    same = torch.isclose(compiled.codes, batched.codes, rtol=1e-3, atol=1e-4).all(dim=1)
    assert same.float().mean() >= 0.97
    torch.testing.assert_close(err_c[same], err_b[same], rtol=1e-4, atol=1e-4)
    assert abs(float(err_c.sum() / err_b.sum()) - 1) < 2e-3
