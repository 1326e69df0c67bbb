"""The mode registry and `infer`: names, validation, bad inputs, amortized = sae.encode bit for bit."""

import pytest
import torch
from helpers import (
    batch_topk_training_sae,
    random_dictionary,
    sae_dictionary,
    sparse_signals,
    torch_threads,
    toy_activations,
)

import saelens_amort
from saelens_amort.errors import SaeAmortError
from saelens_amort.inference import (
    InferenceResult,
    ModeOptions,
    infer,
    list_modes,
    objective,
    register_mode,
)
from saelens_amort.inference.result import make_result
from saelens_amort.saes import TOY_SAE_FAMILIES



@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield

def _zero_mode(x, dictionary, options):
    codes = torch.zeros(x.shape[0], dictionary.d_sae, dtype=dictionary.atoms.dtype)
    return make_result(codes, objective(dictionary.target(x), codes, dictionary, options.lam), lam=options.lam)


def _k_mode(x, dictionary, options):
    res = _zero_mode(x, dictionary, options)
    return res._replace(info={"k": options.k})


def test_builtin_modes_are_registered_and_exported():
    assert {"amortized", "semi", "unamortized"} <= set(list_modes())
    assert saelens_amort.infer is infer and saelens_amort.list_modes is list_modes
    assert saelens_amort.register_mode is register_mode and saelens_amort.InferenceResult is InferenceResult
    assert callable(saelens_amort.calibrate_lambda)


def test_register_is_idempotent_and_guards_overwrites():
    register_mode("test_zero", _zero_mode, needs_lambda=False)
    register_mode("test_zero", _zero_mode, needs_lambda=False)  # a notebook re-import
    assert list_modes().count("test_zero") == 1
    with pytest.raises(SaeAmortError, match="already registered"):
        register_mode("test_zero", _k_mode, overwrite_ok=False)
    d = random_dictionary()
    res = infer(sparse_signals(d, 3), d, "test_zero", lam=0.5)
    assert res.mode == "test_zero" and res.lam == 0.5 and res.seconds >= 0
    assert torch.equal(res.codes, torch.zeros(3, d.d_sae)) and res.objective.dtype == torch.float32


def test_unknown_mode_and_option_name_the_alternatives():
    d = random_dictionary()
    x = sparse_signals(d, 2)
    with pytest.raises(SaeAmortError, match="registered modes: .*unamortized"):
        infer(x, d, "nope", lam=1.0)
    with pytest.raises(SaeAmortError, match="does not take option.*solvr"):
        infer(x, d, "unamortized", lam=1.0, solvr="ista")
    with pytest.raises(SaeAmortError, match="solver must be one of"):
        infer(x, d, "unamortized", lam=1.0, solver="newton")


def test_bad_inputs_raise_one_line_errors():
    d = random_dictionary()
    x = sparse_signals(d, 4)
    with pytest.raises(SaeAmortError, match=r"expects \[\.\.\., 64\]"):
        infer(x[:, :10], d, lam=1.0)
    for lam in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(SaeAmortError, match="lam"):
            infer(x, d, lam=lam)
    with pytest.raises(SaeAmortError, match="tol"):
        infer(x, d, lam=1.0, tol=-1)
    with pytest.raises(SaeAmortError, match="steps"):
        infer(x, d, lam=1.0, steps=-3)
    with pytest.raises(SaeAmortError, match="init"):
        infer(x, d, "semi", lam=1.0, init="warm")
    with pytest.raises(SaeAmortError, match="init codes have shape"):
        infer(x, d, "semi", lam=1.0, init=torch.zeros(3, d.d_sae))
    with pytest.raises(SaeAmortError, match="needs the SAE"):
        infer(x, d, "amortized")
    with pytest.raises(SaeAmortError, match="nan_policy"):
        infer(x, d, lam=1.0, nan_policy="ignore")
    for e in (SaeAmortError("x"),):
        assert "\n" not in str(e)


def test_k_is_validated_and_passed():
    register_mode("test_k", _k_mode, needs_lambda=False, needs_k=True)
    d = random_dictionary()
    x = sparse_signals(d, 2)
    for k in (0, -2):
        with pytest.raises(SaeAmortError, match="k must be a positive integer"):
            infer(x, d, "test_k", k=k)
    with pytest.raises(SaeAmortError, match="exceeds the dictionary size"):
        infer(x, d, "test_k", k=d.d_sae + 1)
    with pytest.raises(SaeAmortError, match="needs k"):
        infer(x, d, "test_k")
    assert infer(x, d, "test_k", k=5).info["k"] == 5


def test_nan_rows_raise_with_count_or_are_dropped():
    d = random_dictionary()
    x = sparse_signals(d, 6)
    x[1, 3] = float("nan")
    x[4, 0] = float("inf")
    with pytest.raises(SaeAmortError, match="2 of 6 activation rows"):
        infer(x, d, lam=0.5)
    res = infer(x, d, lam=0.5, nan_policy="drop")
    assert res.info["dropped_rows"] == 2 and res.info["kept_rows"].tolist() == [0, 2, 3, 5]
    assert res.codes.shape == (4, d.d_sae) and torch.isfinite(res.codes).all()
    clean = infer(x[[0, 2, 3, 5]], d, lam=0.5)
    torch.testing.assert_close(res.codes, clean.codes)


def test_leading_dimensions_are_kept():
    d = random_dictionary()
    x = sparse_signals(d, 6).reshape(2, 3, d.d_in)
    res = infer(x, d, lam=0.5)
    assert res.codes.shape == (2, 3, d.d_sae) and res.n_iter.shape == (2, 3) and res.objective.shape == (2, 3)


def test_mode_options_are_frozen_and_validated():
    opts = ModeOptions(lam=1, extra={"solver": "ista"})
    assert opts.lam == 1.0 and isinstance(opts.lam, float) and opts.option("solver") == "ista"
    with pytest.raises(Exception):
        opts.lam = 2.0  # type: ignore[misc]
    with pytest.raises(SaeAmortError):
        ModeOptions(k=True)  # type: ignore[arg-type]


@pytest.mark.parametrize("family", TOY_SAE_FAMILIES)
def test_amortized_is_sae_encode_bit_for_bit(family):
    sae = saelens_amort.load_sae(f"toy/{family}")
    x = toy_activations(sae.cfg.metadata.hook_name)[:256]
    res = infer(x, sae_dictionary(sae), "amortized", lam=0.1)
    with torch.no_grad():
        expected = sae.encode(x)
    assert torch.equal(res.codes, expected)
    assert (res.n_iter == 0).all() and res.converged.all() and res.mode == "amortized"
    assert torch.isfinite(res.objective).all()
    assert torch.isnan(infer(x, sae_dictionary(sae), "amortized").objective).all()  # no λ, no objective


def test_amortized_accepts_the_sae_itself():
    from saelens_amort.saes.dictionary import Dictionary

    if not hasattr(Dictionary, "of"):
        pytest.skip("Dictionary.of is not available yet")
    sae = saelens_amort.load_sae("toy/topk")
    x = toy_activations(sae.cfg.metadata.hook_name)[:64]
    with torch.no_grad():
        assert torch.equal(infer(x, sae, "amortized").codes, sae.encode(x))


def test_sae_dictionaries_are_cached_until_the_weights_change():
    from saelens_amort.inference import resolve_dictionary

    sae = saelens_amort.load_sae("toy/standard")
    first = resolve_dictionary(sae)
    assert resolve_dictionary(sae) is first
    with torch.no_grad():
        sae.W_dec.mul_(2.0)
    second = resolve_dictionary(sae)
    assert second is not first
    torch.testing.assert_close(second.norms, 2.0 * first.norms)


def test_k_and_lambda_targets_come_from_the_encoder_on_the_whole_batch():
    sae = batch_topk_training_sae()
    x = toy_activations(sae.cfg.metadata.hook_name, n_docs=48)  # 3072 rows, more than the 2048 calibration rows
    with torch.no_grad():
        codes = sae.encode(x)  # the amortized mode's codes for this batch
    l0 = lambda z: float((z != 0).sum(dim=-1).float().mean())  # noqa: E731
    assert l0(sae.encode(x[:2048])) == 8.0 and l0(codes[:2048]) != pytest.approx(8.0, abs=1e-3)
    res = infer(x, sae, "semi", steps=1)
    cal = res.info["calibration"]
    assert cal["n_rows"] == 2048 and cal["target_value"] == pytest.approx(l0(codes[:2048]), rel=1e-6)
    assert res.info["init"] == "encoder"
    register_mode("test_k", _k_mode, needs_lambda=False, needs_k=True)
    shipped = saelens_amort.load_sae("toy/standard")
    with torch.no_grad():
        expected = l0(shipped.encode(x))
    assert infer(x, shipped, "test_k").info["k"]["amortized_l0"] == pytest.approx(expected, rel=1e-6)


def test_objective_charges_signed_codes_their_absolute_value():
    """F = ½‖x' − uA‖² + λ‖u‖₁, computed by hand: a negative code pays λ|u|, not −λ|u|."""
    from saelens_amort.inference.result import objective
    from saelens_amort.saes.dictionary import Dictionary

    atoms = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    d = Dictionary.from_matrix(atoms)
    x_t = torch.tensor([[1.0, 2.0]])
    u = torch.tensor([[0.5, -1.0, 2.0]])  # uA = [1.7, 0.6]; residual [−0.7, 1.4]
    expected = 0.5 * (0.7**2 + 1.4**2) + 0.3 * (0.5 + 1.0 + 2.0)
    assert float(objective(x_t, u, d, 0.3)) == pytest.approx(expected, rel=1e-6)
