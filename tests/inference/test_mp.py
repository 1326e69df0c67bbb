"""Non-negative matching pursuit: monotone residual, exactness on orthonormal atoms, atom reuse, bad input."""

import pytest
import torch

from saelens_amort.errors import SaeAmortError
from saelens_amort.inference import get_mode, infer, list_modes
from saelens_amort.inference.mp import nn_mp
from saelens_amort.saes.dictionary import Dictionary
from saelens_amort.synthetic import make_problem


@pytest.fixture(scope="module")
def noisy():
    return make_problem(256, 64, 256, 8, seed=1, noise=0.05, dtype=torch.float64)


@pytest.fixture(scope="module")
def coherent():
    return make_problem(256, 64, 256, 8, seed=1, noise=0.05, coherence=0.3, dtype=torch.float64)


@pytest.fixture(scope="module")
def orthonormal():
    """k-sparse non-negative codes on an orthonormal dictionary, where MP and OMP must both be exact."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(64, 64, generator=gen))
    dictionary = Dictionary.from_matrix(q.T.contiguous())
    support = torch.rand(200, 64, generator=gen).argsort(dim=1)[:, :5]
    codes = torch.zeros(200, 64).scatter_(1, support, 0.5 + torch.rand(200, 5, generator=gen))
    return dictionary, codes, codes @ dictionary.atoms


def test_registered_as_k_sparse_mode_without_lambda():
    assert "mp" in list_modes()
    spec = get_mode("mp")
    assert spec.needs_k and not spec.needs_lambda


def test_residual_decreases_every_step(noisy):
    previous = noisy.x.norm(dim=1)
    for k in range(1, 11):
        result = infer(noisy.x, noisy.dictionary, "mp", k=k)
        norms = (noisy.x - result.codes @ noisy.dictionary.atoms).norm(dim=1)
        stepped = result.n_iter == k
        assert stepped.float().mean() > 0.95
        assert (norms[stepped] < previous[stepped]).all(), k
        assert (norms <= previous + 1e-12).all(), k
        previous = norms


def test_codes_non_negative_and_atoms_may_be_picked_again(coherent):
    result = infer(coherent.x, coherent.dictionary, "mp", k=24)
    assert (result.codes >= 0).all()
    l0 = (result.codes > 0).sum(dim=1)
    assert (l0 <= result.n_iter).all()
    assert (l0 < result.n_iter).any()  # some atom was selected twice on this coherent dictionary


def test_exact_and_equal_to_omp_on_orthonormal_atoms(orthonormal):
    dictionary, codes, x = orthonormal
    mp = infer(x, dictionary, "mp", k=5)
    omp = infer(x, dictionary, "omp", k=5)
    torch.testing.assert_close(mp.codes, codes, atol=1e-5, rtol=0)
    torch.testing.assert_close(omp.codes, codes, atol=1e-5, rtol=0)
    assert torch.equal(mp.codes > 0, omp.codes > 0)
    # with a larger budget both stop once the residual is explained
    assert infer(x, dictionary, "mp", k=10).n_iter.eq(5).all()


def test_gram_and_direct_paths_agree(noisy):
    A = noisy.dictionary.atoms
    direct = nn_mp(noisy.x, A, 12)
    with_gram = nn_mp(noisy.x, A, 12, gram=A @ A.T)
    torch.testing.assert_close(direct.u, with_gram.u, atol=1e-10, rtol=0)
    torch.testing.assert_close(direct.residual, noisy.x - direct.u @ A, atol=1e-12, rtol=0)


def test_objective_reported_at_lambda(noisy):
    result = infer(noisy.x[:16], noisy.dictionary, "mp", k=4, lam=0.2)
    residual = noisy.x[:16] - result.codes @ noisy.dictionary.atoms
    expected = 0.5 * residual.square().sum(dim=1) + 0.2 * result.codes.sum(dim=1)
    torch.testing.assert_close(result.objective, expected.float(), atol=1e-5, rtol=1e-5)
    assert infer(noisy.x[:4], noisy.dictionary, "mp", k=4).objective.isnan().all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 0}, "k must be"),
        ({"k": 300}, "exceeds"),
        ({"k": 3, "init": "alista"}, "starts from u = 0"),
        ({}, "needs k"),
    ],
)
def test_bad_inputs_raise_one_line_errors(noisy, kwargs, message):
    with pytest.raises(SaeAmortError, match=message) as err:
        infer(noisy.x[:4], noisy.dictionary, "mp", **kwargs)
    assert "\n" not in str(err.value)
