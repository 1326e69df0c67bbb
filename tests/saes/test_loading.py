"""load_sae: SAE-Lens directories round-trip exactly, toy and release specs fail clearly; check_sae_fits."""

import time

import pytest
import torch
from sae_lens import (
    GatedSAE,
    GatedSAEConfig,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
)
from sae_lens.saes.sae import SAEMetadata
from transformer_lens import HookedTransformer, HookedTransformerConfig

import saelens_amort.saes.loading as loading
from saelens_amort.errors import SaeAmortError
from saelens_amort.saes import TOY_SAE_FAMILIES, check_sae_fits, load_sae

HOOK = "blocks.1.hook_resid_post"
SAE_CLASSES = {
    "standard": (StandardSAE, StandardSAEConfig, {}),
    "topk": (TopKSAE, TopKSAEConfig, {"k": 5}),
    "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig, {}),
    "gated": (GatedSAE, GatedSAEConfig, {}),
}


def _random_sae(kind: str, d_in: int = 32, d_sae: int = 96, seed: int = 0):
    cls, cfg_cls, extra = SAE_CLASSES[kind]
    meta = SAEMetadata(hook_name=HOOK, model_name="tiny", context_size=16, prepend_bos=True)
    sae = cls(cfg_cls(d_in=d_in, d_sae=d_sae, metadata=meta, **extra))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
            if name == "threshold":
                param.copy_(0.2 + torch.rand(param.shape, generator=gen))
    return sae


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=64, n_ctx=16, d_vocab=50, act_fn="gelu",
        normalization_type="LN",
    )
    return HookedTransformer(cfg)


@pytest.mark.parametrize("kind", sorted(SAE_CLASSES))
def test_sae_lens_directory_round_trip_is_exact(kind, tmp_path):
    sae = _random_sae(kind)
    sae.save_model(tmp_path)
    loaded = load_sae(str(tmp_path))
    assert type(loaded) is type(sae)
    want, got = sae.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    assert loaded.cfg.metadata.hook_name == HOOK
    x = torch.randn(20, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        codes = sae.encode(x)
        assert (codes > 0).any()
        assert torch.equal(loaded.encode(x), codes)


def test_dtype_casts(tmp_path):
    _random_sae("jumprelu").save_model(tmp_path)
    sae = load_sae(tmp_path, dtype=torch.float64)
    assert sae.W_enc.dtype == torch.float64 and sae.threshold.dtype == torch.float64


def test_toy_specs(tmp_path, monkeypatch):
    with pytest.raises(SaeAmortError, match="batchtopk"):
        load_sae("toy/nonsense")
    monkeypatch.setattr(loading, "_toy_dir", lambda family: tmp_path / family)
    with pytest.raises(SaeAmortError, match="saeamort toy build"):
        load_sae("toy/topk")
    _random_sae("topk").save_model(tmp_path / "topk")
    assert isinstance(load_sae("toy/topk"), TopKSAE)
    assert set(TOY_SAE_FAMILIES) >= {"standard", "topk", "batchtopk", "matryoshka_batchtopk", "jumprelu", "gated"}


def test_bad_local_specs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SaeAmortError, match="cfg.json.*sae_weights.safetensors.*ae.pt.*config.json"):
        load_sae(str(tmp_path / "empty"))
    with pytest.raises(SaeAmortError, match="does not exist"):
        load_sae(str(tmp_path / "missing" / "dir"))
    with pytest.raises(SaeAmortError, match="does not exist"):
        load_sae(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(SaeAmortError, match="is a file"):
        load_sae(str(tmp_path / "file.txt"))
    with pytest.raises(SaeAmortError, match="cannot interpret"):
        load_sae("justaname")


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))


def test_release_offline_not_cached_fails_fast_and_clearly(offline_hub):
    start = time.monotonic()
    with pytest.raises(SaeAmortError, match=r"--sae-path.*--model toy") as info:
        load_sae("gpt2-small-res-jb/blocks.8.hook_resid_pre")
    assert time.monotonic() - start < 20
    assert "\n" not in str(info.value)


def test_unknown_release_and_sae_id(offline_hub):
    unknown = "unknown SAE-Lens release 'no-such-release'.*get_pretrained_saes_directory"
    with pytest.raises(SaeAmortError, match=unknown):
        load_sae("no-such-release/blocks.0.hook_resid_pre")
    with pytest.raises(SaeAmortError, match="not in release 'gpt2-small-res-jb'.*blocks.8.hook_resid_pre"):
        load_sae("gpt2-small-res-jb/blocks.8.hook_resid_pree")


def test_check_sae_fits(tiny_model):
    sae = _random_sae("standard")
    assert check_sae_fits(sae, tiny_model) == HOOK
    with pytest.warns(UserWarning, match="blocks.0.hook_resid_post.*blocks.1.hook_resid_post"):
        assert check_sae_fits(sae, tiny_model, "blocks.0.hook_resid_post") == "blocks.0.hook_resid_post"
    with pytest.raises(SaeAmortError, match="differs"):
        check_sae_fits(sae, tiny_model, "blocks.0.hook_resid_post", strict_hook=True)
    with pytest.raises(SaeAmortError, match=r"not in the model.*blocks.1.hook_resid_post"):
        check_sae_fits(sae, tiny_model, "blocks.1.hook_resid_postt")
    with pytest.raises(SaeAmortError, match="d_in=48.*d_model=32"):
        check_sae_fits(_random_sae("topk", d_in=48), tiny_model)
    sae.cfg.metadata = SAEMetadata()
    with pytest.raises(SaeAmortError, match="hook_name"):
        check_sae_fits(sae, tiny_model)
    assert check_sae_fits(sae, tiny_model, HOOK) == HOOK
