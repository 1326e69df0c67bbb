"""The synthetic ground-truth benchmark: problem generation, MCC, the matched-encoder SAE, and the MCC comparison."""

import pytest
import torch

from saelens_amort.errors import SaeAmortError
from saelens_amort.inference import infer
from saelens_amort.synthetic import SyntheticProblem, make_problem, mcc, sae_for_problem


@pytest.fixture(scope="module")
def problem():
    return make_problem(2048, 64, 256, 6, seed=0, noise=0.01)


def test_problem_is_k_sparse_non_negative_on_unit_atoms():
    p = make_problem(300, 32, 100, 5, seed=3)
    assert isinstance(p, SyntheticProblem)
    assert p.codes.shape == (300, 100) and p.x.shape == (300, 32) and p.dictionary.atoms.shape == (100, 32)
    torch.testing.assert_close(p.dictionary.atoms.norm(dim=1), torch.ones(100))
    assert (p.codes >= 0).all() and (p.codes > 0).sum(dim=1).eq(5).all()
    nonzero = p.codes[p.codes > 0]
    assert nonzero.min() >= 0.5 and nonzero.max() <= 1.5  # default magnitude (0.5, 1.5)
    torch.testing.assert_close(p.x, p.codes @ p.dictionary.atoms, atol=1e-6, rtol=0)
    assert p.dictionary.bias.eq(0).all()
    torch.testing.assert_close(p.dictionary.norms, torch.ones(100))


def test_same_seed_same_problem_across_dtypes_and_noise_has_sigma():
    a = make_problem(64, 16, 40, 3, seed=7)
    b = make_problem(64, 16, 40, 3, seed=7, dtype=torch.float64)
    assert b.x.dtype == torch.float64 and str(a.x.device) == "cpu"
    torch.testing.assert_close(a.x, b.x.float())
    assert not torch.equal(a.codes, make_problem(64, 16, 40, 3, seed=8).codes)
    noisy = make_problem(4000, 64, 40, 3, seed=7, noise=0.2, dtype=torch.float64)
    residual = noisy.x - noisy.codes @ noisy.dictionary.atoms
    assert abs(float(residual.std()) - 0.2) < 0.005


def test_magnitude_options_coherence_and_frequency_decay():
    fixed = make_problem(50, 16, 40, 3, magnitude=lambda shape, gen: torch.full(shape, 2.0))
    assert fixed.codes[fixed.codes > 0].eq(2.0).all()
    expo = make_problem(50, 16, 40, 3, magnitude=torch.distributions.Exponential(torch.tensor(1.0)))
    assert (expo.codes > 0).sum(dim=1).eq(3).all()

    def mean_cosine(p):
        g = p.dictionary.atoms @ p.dictionary.atoms.T
        return float((g.sum() - g.diagonal().sum()) / (g.numel() - g.shape[0]))

    assert abs(mean_cosine(make_problem(10, 64, 128, 2))) < 0.05
    assert abs(mean_cosine(make_problem(10, 64, 128, 2, coherence=0.4)) - 0.4) < 0.1

    skewed = make_problem(2000, 16, 64, 2, frequency_decay=1.0)
    freq = (skewed.codes > 0).float().mean(dim=0)
    assert freq[:8].mean() > 4 * freq[-8:].mean()


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        ((10, 8, 20, 21), {}, "exceeds d_sae"),
        ((0, 8, 20, 2), {}, "n must be"),
        ((10, 8, 20, 0), {}, "k must be"),
        ((10, -1, 20, 2), {}, "d_in must be"),
        ((10, 8, 20, 2), {"noise": -0.1}, "noise"),
        ((10, 8, 20, 2), {"coherence": 1.0}, "coherence"),
        ((10, 8, 20, 2), {"magnitude": (0.0, 1.0)}, "lo <= hi"),
        ((10, 8, 20, 2), {"magnitude": "big"}, "magnitude must be"),
        ((10, 8, 20, 2), {"magnitude": lambda shape, gen: -torch.ones(shape)}, "strictly positive"),
    ],
)
def test_bad_sizes_and_options_raise(args, kwargs, message):
    with pytest.raises(SaeAmortError, match=message) as err:
        make_problem(*args, **kwargs)
    assert "\n" not in str(err.value)


def test_mcc_identity_permutation_noise_random(problem):
    truth = problem.codes
    assert mcc(truth, truth) == pytest.approx(1.0)
    assert mcc(truth, truth[:, torch.randperm(256)] * 3.0) == pytest.approx(1.0)
    assert mcc(truth, -truth) == pytest.approx(1.0)  # |corr|
    gen = torch.Generator().manual_seed(1)
    blurred = mcc(truth, truth + 0.3 * torch.rand(truth.shape, generator=gen))
    assert 0.5 < blurred < 0.99
    random = (torch.rand(truth.shape, generator=gen) < 6 / 256) * torch.rand(truth.shape, generator=gen)
    assert mcc(truth, random) < 0.15


def test_mcc_dead_latents_and_different_widths(problem):
    truth = problem.codes
    dead = truth.clone()
    dead[:, :64] = 0.0  # constant inferred columns correlate 0
    assert mcc(truth, dead) == pytest.approx(0.75)
    wider = torch.cat([truth[:, torch.randperm(256)], torch.rand(2048, 100)], dim=1)
    assert mcc(truth, wider) == pytest.approx(1.0)
    assert mcc(truth, truth[:, :128]) == pytest.approx(0.5)  # missing latents count 0
    truth_with_dead = torch.cat([truth, torch.zeros(2048, 10)], dim=1)  # dead true latents are not scored
    assert mcc(truth_with_dead, truth) == pytest.approx(1.0)


def test_mcc_bad_inputs(problem):
    with pytest.raises(SaeAmortError, match="rows"):
        mcc(problem.codes, problem.codes[:10])
    with pytest.raises(SaeAmortError, match="2-D"):
        mcc(problem.codes[0], problem.codes[0])
    with pytest.raises(SaeAmortError, match="constant"):
        mcc(torch.zeros(10, 4), torch.rand(10, 4))


def test_sae_for_problem_ties_encoder_and_decoder_to_the_truth(problem):
    topk = sae_for_problem(problem, "topk")
    torch.testing.assert_close(topk.decode(problem.codes), problem.x, atol=0.05, rtol=0)  # noise 0.01 per coordinate
    torch.testing.assert_close(topk.W_enc, problem.dictionary.atoms.T)
    assert (topk.encode(problem.x) > 0).sum(dim=1).le(6).all()
    standard = sae_for_problem(problem, "standard")
    mean_l0 = float((standard.encode(problem.x) > 0).sum(dim=1).float().mean())
    assert abs(mean_l0 - 6) < 0.01
    high = sae_for_problem(problem, "standard", threshold=10.0)
    assert high.encode(problem.x).eq(0).all()
    with pytest.raises(SaeAmortError, match="architecture"):
        sae_for_problem(problem, "gated")
    with pytest.raises(SaeAmortError, match="k must be"):
        sae_for_problem(problem, "topk", k=257)


def test_unamortized_codes_beat_the_matched_sae_encoder_on_mcc(problem):
    """The issue's benchmark: same (true) dictionary, per-input optimisation recovers the latents better."""
    sae = sae_for_problem(problem, "topk")
    amortized = mcc(problem.codes, infer(problem.x, sae, "amortized").codes)
    unamortized_result = infer(problem.x, sae, "unamortized", lam=0.05)
    unamortized = mcc(problem.codes, unamortized_result.codes)
    omp = mcc(problem.codes, infer(problem.x, sae, "omp", k=6).codes)
    assert unamortized > amortized + 0.1
    assert unamortized > 0.99 and omp > 0.99
    assert amortized < 0.9
