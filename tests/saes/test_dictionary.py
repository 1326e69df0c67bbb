"""Dictionary.from_sae: decode(z) == z @ D + b for every architecture, input processing, refusals, lipschitz."""

from __future__ import annotations

import gc
import time
import warnings
import weakref
from types import SimpleNamespace

import pytest
import torch
from helpers import (
    DICTIONARY_LEARNING_CLASSES,
    build_random_dictionary_learning_ae,
    import_dictionary_learning,
    write_dictionary_learning_dir,
)
from sae_lens import SAE, GatedSAE, GatedSAEConfig, StandardSAE, StandardSAEConfig
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.sae import SAEMetadata

import saelens_amort.saes.dictionary as dictionary_module
from saelens_amort.errors import SaeAmortError
from saelens_amort.saes import TOY_SAE_FAMILIES, load_dictionary_learning_sae, load_sae
from saelens_amort.saes.dictionary import Dictionary

D_IN, D_SAE = 32, 128
REFUSED = {"transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder", "temporal"}
CONFIG_EXTRA = {
    "topk": {"k": 8},
    "abstopk": {"k": 8},
    "batchtopk": {"k": 8},
    "matryoshka_batchtopk": {"k": 8, "matryoshka_widths": [32, 64, 128]},
    "temporal": {"n_heads": 4, "bottleneck_factor": 4, "kval_topk": 8},
    **{arch: {"d_out": D_IN, "apply_b_dec_to_input": False} for arch in REFUSED if "transcoder" in arch},
}


def _randomize(sae: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random and non-trivial; decoder rows scaled to random non-unit norms; thresholds positive."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_((torch.randn(p.shape, generator=gen) * 0.5).to(p.dtype))
            if "threshold" in name:
                p.copy_((0.05 + 0.2 * torch.rand(p.shape, generator=gen)).to(p.dtype))
        if isinstance(getattr(sae, "W_dec", None), torch.nn.Parameter):
            scale = 0.2 + 3 * torch.rand(sae.W_dec.shape[0], 1, generator=gen)
            sae.W_dec.mul_(scale.to(sae.W_dec.dtype))
    return sae


def _build(arch: str, registry=SAE_CLASS_REGISTRY, seed: int = 0, **overrides) -> SAE:
    cls, cfg_cls = registry[arch]
    cfg = cfg_cls(d_in=D_IN, d_sae=D_SAE, **{**CONFIG_EXTRA.get(arch, {}), **overrides})
    return _randomize(cls(cfg), seed)


def _codes(n: int = 16, d_sae: int = D_SAE, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    dense = torch.rand(n // 2, d_sae, generator=gen) * 2
    m = n - n // 2
    sparse = torch.relu(torch.randn(m, d_sae, generator=gen)) * (torch.rand(m, d_sae, generator=gen) < 0.1)
    return torch.cat([dense, sparse]).to(dtype)


def _x(n: int = 16, d_in: int = D_IN, seed: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=gen) * 2 + 0.5


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> None:
    a, b = a.double(), b.double()
    assert a.shape == b.shape
    assert float((a - b).norm()) <= rtol * float(b.norm()) + 1e-6, float((a - b).norm() / b.norm())


def _check_decode(sae, d: Dictionary, rtol: float = 1e-5) -> None:
    """sae.decode(z) == dictionary reconstruction in x's space, for random codes and for the SAE's own codes."""
    z = _codes(dtype=d.atoms.dtype)
    with torch.no_grad():
        x = _x().to(d.atoms.dtype)
        own = sae.encode(x)  # also sets any per-token normalisation state sae.decode needs
        _close(d.decode_to_input_space(d.from_sae_codes(own), x), sae.decode(own), rtol)
        if getattr(sae.cfg, "normalize_activations", "none") in ("none", "expected_average_only_in"):
            _close(d.reconstruct(d.from_sae_codes(z)), sae.decode(z), rtol)
    _close(d.to_sae_codes(d.from_sae_codes(z)), z * (d.norms > 0), rtol)  # zero-norm atoms: code 0


# --- every architecture --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(SAE_CLASS_REGISTRY))
def test_every_inference_architecture(arch):
    try:
        sae = _build(arch)
    except (TypeError, ValueError, AssertionError) as e:  # a later-registered architecture needing more config
        pytest.skip(f"cannot build {arch} with defaults: {e}")
    if arch in REFUSED:
        with pytest.raises(SaeAmortError, match=arch) as info:
            Dictionary.from_sae(sae)
        assert "\n" not in str(info.value)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # abstopk's signed-codes warning
        d = Dictionary.from_sae(sae)
    assert d.architecture == arch and d.sae is sae
    assert d.atoms.dtype == sae.W_dec.dtype and d.atoms.device == sae.W_dec.device
    torch.testing.assert_close(d.atoms.norm(dim=1), torch.ones(D_SAE))
    if arch != "matching_pursuit" or sae.cfg.apply_b_dec_to_input:
        torch.testing.assert_close(d.bias, sae.b_dec.detach())
    _check_decode(sae, d)


@pytest.mark.filterwarnings("ignore:decoder_init_norm must be set")
@pytest.mark.parametrize("arch", sorted(SAE_TRAINING_CLASS_REGISTRY))
def test_every_training_architecture(arch):
    try:
        sae = _build(arch, SAE_TRAINING_CLASS_REGISTRY)
    except (TypeError, ValueError, AssertionError) as e:
        pytest.skip(f"cannot build training {arch} with defaults: {e}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = Dictionary.from_sae(sae)
    z = _codes()
    with torch.no_grad():
        _close(d.reconstruct(d.from_sae_codes(z)), sae.decode(z))


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka_batchtopk"])
def test_batchtopk_as_saved(arch, tmp_path):
    training = _build(arch, SAE_TRAINING_CLASS_REGISTRY)
    training.save_inference_model(tmp_path)
    sae = SAE.load_from_disk(tmp_path)
    assert sae.cfg.architecture() == "jumprelu"
    d = Dictionary.from_sae(sae)
    _check_decode(sae, d)
    z = _codes()
    with torch.no_grad():  # the saved SAE decodes exactly as the training one did
        _close(d.reconstruct(d.from_sae_codes(z)), training.decode(z))


@pytest.mark.parametrize("rescale", [True, False])
def test_topk_rescale_acts_by_decoder_norm(rescale):
    sae = _build("topk", rescale_acts_by_decoder_norm=rescale)
    d = Dictionary.from_sae(sae)
    W = sae.W_dec.detach()
    row_norms = W.norm(dim=1)
    expected_norms = torch.ones(D_SAE) if rescale else row_norms
    torch.testing.assert_close(d.norms, expected_norms)
    torch.testing.assert_close(d.atoms, W / row_norms[:, None])
    _check_decode(sae, d)


def test_gated_r_mag_stays_in_the_encoder():
    sae = _build("gated")
    assert float(sae.r_mag.detach().abs().min()) > 0
    d = Dictionary.from_sae(sae)
    torch.testing.assert_close(d.atoms * d.norms[:, None], sae.W_dec.detach())
    _check_decode(sae, d)


class _MagnitudeGatedSAE(GatedSAE):
    """A gated SAE whose decode scales each code by exp(r_mag) before the decoder (a per-latent factor to fold)."""

    def decode(self, feature_acts):
        return super().decode(feature_acts * self.r_mag.exp())


def test_gated_per_latent_factor_is_folded_into_D():
    sae = _randomize(_MagnitudeGatedSAE(GatedSAEConfig(d_in=D_IN, d_sae=D_SAE)))
    d = Dictionary.from_sae(sae)
    folded = sae.r_mag.detach().exp()[:, None] * sae.W_dec.detach()
    torch.testing.assert_close(d.atoms * d.norms[:, None], folded)
    assert not torch.allclose(folded, sae.W_dec.detach())
    _check_decode(sae, d)


# --- input processing ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["layer_norm", "constant_norm_rescale", "expected_average_only_in"])
def test_normalize_activations(norm):
    sae = _build("standard", normalize_activations=norm)
    d = Dictionary.from_sae(sae)
    assert not hasattr(sae, "x_norm_coeff") and not hasattr(sae, "ln_mu")  # probing leaves no state behind
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(d.target(x), sae.process_sae_in(x))  # apply_b_dec_to_input=True, b = b_dec
        torch.testing.assert_close(d.target(x), d.process(x) - d.bias)
        _check_decode(sae, d)
        if norm != "expected_average_only_in":
            assert not torch.allclose(d.process(x), x)
            torch.testing.assert_close(d.to_input_space(d.process(x), x), x, rtol=1e-4, atol=1e-5)


def test_apply_b_dec_to_input_false_still_subtracts_the_decoder_bias():
    sae = _build("jumprelu", apply_b_dec_to_input=False)
    d = Dictionary.from_sae(sae)
    x, z = _x(), _codes()
    with torch.no_grad():
        torch.testing.assert_close(d.target(x), sae.process_sae_in(x) - sae.b_dec)
        torch.testing.assert_close(d.target(x), x - sae.b_dec)
        # the residual of the objective is the reconstruction residual
        torch.testing.assert_close(d.target(x) - d.from_sae_codes(z) @ d.atoms, x - sae.decode(z), rtol=1e-5, atol=1e-4)
    _check_decode(sae, d)


def test_hook_z_reshaping():
    meta = SAEMetadata(hook_name="blocks.0.attn.hook_z")
    cfg = StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, reshape_activations="hook_z", metadata=meta)
    sae = _randomize(StandardSAE(cfg))
    d = Dictionary.from_sae(sae)
    x = _x().reshape(16, 4, 8)
    with torch.no_grad():
        own = sae.encode(x)
        out = d.decode_to_input_space(d.from_sae_codes(own), x)
        assert out.shape == x.shape
        _close(out, sae.decode(own))
        torch.testing.assert_close(d.target(x), sae.process_sae_in(x))
        torch.testing.assert_close(d.target(x), d.target(x.flatten(-2)))


def test_activation_shape_mismatch_is_a_user_error():
    d = Dictionary.from_sae(_build("standard"))
    with pytest.raises(SaeAmortError, match="d_in=32"):
        d.target(torch.zeros(3, 31))


# --- refusals and probing ------------------------------------------------------------------------------------------


def test_nonlinear_decode_is_refused_naming_the_architecture():
    sae = _build("standard")
    linear = sae.decode
    sae.decode = lambda z: torch.relu(linear(z))
    with pytest.raises(SaeAmortError, match="standard") as info:
        Dictionary.from_sae(sae)
    assert "not affine" in str(info.value) and "\n" not in str(info.value)


def test_decode_hidden_from_autograd_falls_back_to_forward_probing():
    sae = _build("jumprelu")
    linear = sae.decode
    sae.decode = lambda z: linear(z).detach()
    d = Dictionary.from_sae(sae)
    torch.testing.assert_close(d.atoms * d.norms[:, None], sae.W_dec.detach())
    _check_decode(sae, d)


def test_decode_linear_only_on_non_negative_codes_is_accepted():
    sae = _build("standard")
    linear = sae.decode
    sae.decode = lambda z: linear(z.abs())
    d = Dictionary.from_sae(sae)
    _check_decode(sae, d)


def test_anything_with_the_sae_lens_interface():
    W = torch.randn(D_SAE, D_IN) * 2
    b = torch.randn(D_IN)

    class Bare(torch.nn.Module):
        cfg = SimpleNamespace(d_in=D_IN, d_sae=D_SAE)

        def decode(self, z):
            return z @ W + b

    d = Dictionary.from_sae(Bare())
    assert d.architecture == "Bare"
    z = _codes()
    _close(d.reconstruct(d.from_sae_codes(z)), z @ W + b)


def test_of_accepts_dictionaries_saes_and_matrices():
    sae = _build("standard")
    d = Dictionary.of(sae)
    assert Dictionary.of(d) is d and d.sae is sae
    m = Dictionary.of(torch.randn(D_SAE, D_IN))
    assert m.d_sae == D_SAE and m.d_in == D_IN and m.sae is None
    with pytest.raises(SaeAmortError, match="cannot build a dictionary"):
        Dictionary.of("standard")


def test_of_caches_the_view_per_sae_until_its_weights_change():
    sae = _build("standard")
    d = Dictionary.of(sae)
    assert Dictionary.of(sae) is d  # not re-probed: hooks call Dictionary.of on every entry
    with torch.no_grad():
        sae.W_dec.mul_(2.0)  # in place: the tensor's version changes
    d2 = Dictionary.of(sae)
    assert d2 is not d
    torch.testing.assert_close(d2.norms, 2.0 * d.norms)
    sae.W_dec = torch.nn.Parameter(sae.W_dec.detach() * 3.0)  # replaced: the data pointer changes
    d3 = Dictionary.of(sae)
    assert d3 is not d2
    torch.testing.assert_close(d3.norms, 3.0 * d2.norms)
    alive = weakref.ref(sae)
    del sae, d, d2, d3
    gc.collect()
    assert alive() is None  # the cache does not keep its SAE alive


def test_zero_norm_atoms_keep_zero_codes():
    sae = _build("standard")
    with torch.no_grad():
        sae.W_dec[:3] = 0
    d = Dictionary.from_sae(sae)
    assert torch.all(d.norms[:3] == 0) and torch.all(d.atoms[:3] == 0)
    u = torch.rand(4, D_SAE)
    assert torch.all(d.to_sae_codes(u)[:, :3] == 0)
    _check_decode(sae, d)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtype_is_kept(dtype):
    sae = _build("topk").to(dtype=dtype)
    d = Dictionary.from_sae(sae)
    assert d.atoms.dtype == dtype and d.norms.dtype == dtype and d.bias.dtype == dtype
    assert isinstance(d.lipschitz, float)
    _check_decode(sae, d, rtol=1e-9 if dtype == torch.float64 else 3e-2)


def test_lipschitz_matches_spectral_norm_and_is_cached(monkeypatch):
    d = Dictionary.from_sae(_build("gated"))
    calls = []
    real = dictionary_module._sigma_max_sq
    monkeypatch.setattr(dictionary_module, "_sigma_max_sq", lambda A: calls.append(1) or real(A))
    expected = float(torch.linalg.matrix_norm(d.atoms.double(), 2) ** 2)
    assert abs(d.lipschitz - expected) <= 1e-3 * expected
    assert d.lipschitz == d.lipschitz and len(calls) == 1


# --- converted dictionary_learning SAEs and the shipped toy SAEs ---------------------------------------------------


@pytest.mark.parametrize("dict_class", sorted(DICTIONARY_LEARNING_CLASSES))
def test_dictionary_learning_converted(dict_class, tmp_path):
    if import_dictionary_learning() is None:
        pytest.skip("reference missing: pip install --no-deps dictionary-learning==0.1.0")
    ae = build_random_dictionary_learning_ae(dict_class)
    sae = load_dictionary_learning_sae(write_dictionary_learning_dir(tmp_path, ae, dict_class))
    d = Dictionary.from_sae(sae)
    z = _codes()
    with torch.no_grad():
        _close(d.reconstruct(d.from_sae_codes(z)), ae.decode(z))  # the original module's decode
        x = _x()
        torch.testing.assert_close(d.target(x), x - d.bias)
    _check_decode(sae, d)


def _load_toy(family: str) -> SAE:
    for attempt in range(3):  # the shipped weights may be mid-rebuild (directory swapped atomically)
        try:
            return load_sae(f"toy/{family}")
        except (SaeAmortError, OSError):
            if attempt == 2:
                raise
            time.sleep(5)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("family", TOY_SAE_FAMILIES)
def test_toy_saes(family):
    sae = _load_toy(family)
    d = Dictionary.from_sae(sae)
    assert d.d_in == sae.cfg.d_in and d.d_sae == sae.cfg.d_sae
    with torch.no_grad():
        x = _x(d_in=d.d_in)
        own = sae.encode(x)
        _close(d.decode_to_input_space(d.from_sae_codes(own), x), sae.decode(own))
        z = _codes(d_sae=d.d_sae)
        _close(d.reconstruct(d.from_sae_codes(z)), sae.decode(z))
    if family == "topk":
        assert sae.cfg.rescale_acts_by_decoder_norm
        torch.testing.assert_close(d.norms, torch.ones(d.d_sae))


def test_bare_matrix_dictionary_unchanged():
    D = torch.randn(D_SAE, D_IN)
    b = torch.randn(D_IN)
    d = Dictionary.from_matrix(D, b)
    x = _x()
    torch.testing.assert_close(d.target(x), x - b)
    torch.testing.assert_close(d.to_input_space(d.target(x), x), x - b)
    torch.testing.assert_close(d.atoms * d.norms[:, None], D)
    with pytest.raises(SaeAmortError, match="2-D"):
        Dictionary.from_matrix(torch.zeros(3))
