"""`saeamort toy build` at tiny scale runs the whole pipeline; the shipped world is what build_info says it is."""

import json
import math

import pytest
import torch
from sae_lens import SAE, JumpReLUSAE, TopKSAE

from saelens_amort import SaeAmortError
from saelens_amort.toy.build import FAMILIES, ToyBuildConfig, build_toy_world, load_build_info, scale_config
from saelens_amort.toy.model import load_toy_model
from saelens_amort.toy.paths import WEIGHTS_DIR


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("toyworld") / "weights"
    info = build_toy_world(scale_config("tiny"), out)
    return out, info


@pytest.mark.slow
def test_tiny_build_produces_a_loadable_world(tiny_world):
    out, info = tiny_world
    assert json.loads((out / "build_info.json").read_text()) == json.loads(json.dumps(info))
    model = load_toy_model(out)
    assert model.cfg.original_architecture == "GPTNeoXForCausalLM" and model.cfg.parallel_attn_mlp
    assert model.cfg.positional_embedding_type == "rotary"
    # even 30 steps learn something: the held-out loss is below the uniform baseline log(vocab)
    assert info["lm"]["heldout_loss_nats"] < math.log(model.cfg.d_vocab)
    tokens = model.to_tokens("the team won the match .")
    assert tokens[0, 0].item() == model.tokenizer.bos_token_id
    for family in FAMILIES:
        sae = SAE.load_from_disk(str(out / "saes" / family))
        assert sae.cfg.metadata.hook_name == info["hook_name"] == "blocks.1.hook_resid_post"
        assert sae.cfg.d_in == model.cfg.d_model and sae.cfg.d_sae == 8 * model.cfg.d_model
        assert info["saes"][family]["nmse"] < 1.0
    # SAE-Lens saves BatchTopK-style SAEs for inference as JumpReLU with one global threshold
    for family in ("batchtopk", "matryoshka_batchtopk"):
        sae = SAE.load_from_disk(str(out / "saes" / family))
        assert isinstance(sae, JumpReLUSAE) and torch.unique(sae.threshold).numel() == 1
    assert isinstance(SAE.load_from_disk(str(out / "saes" / "topk")), TopKSAE)
    assert not list(out.parent.glob(".*build*")), "no staging directory may survive a build"


@pytest.mark.slow
def test_build_is_deterministic_in_its_corpus_and_tokenizer(tiny_world, tmp_path):
    out, _ = tiny_world
    again = tmp_path / "again"
    build_toy_world(ToyBuildConfig(**{**scale_config("tiny").__dict__, "families": ("topk",)}), again)
    assert (again / "tokenizer" / "tokenizer.json").read_bytes() == (out / "tokenizer" / "tokenizer.json").read_bytes()
    a, b = load_toy_model(out), load_toy_model(again)
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k], msg=k)


def test_failed_build_leaves_the_old_world_untouched(tmp_path, monkeypatch):
    target = tmp_path / "weights"
    target.mkdir()
    (target / "keep.txt").write_text("old world")
    import saelens_amort.toy.build as build

    def boom(*a, **k):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(build, "train_toy_model", boom)
    with pytest.raises(RuntimeError):
        build_toy_world(scale_config("tiny"), target)
    assert (target / "keep.txt").read_text() == "old world"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights"]


def test_bad_build_configs():
    with pytest.raises(SaeAmortError, match="unknown scale"):
        scale_config("huge")
    with pytest.raises(SaeAmortError, match="unknown SAE families"):
        ToyBuildConfig(families=("standard", "nope"))


def test_shipped_world_is_small_and_beats_the_unigram_model():
    info = load_build_info(WEIGHTS_DIR)
    size = sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file())
    assert size <= 20 * 2**20, f"shipped toy world is {size / 2**20:.1f} MiB"
    lm = info["lm"]
    assert lm["heldout_loss_nats"] < 0.6 * lm["unigram_entropy_nats"], lm
    assert set(info["saes"]) == set(FAMILIES)
    for fam, s in info["saes"].items():
        assert s["nmse"] < 0.5, (fam, s)
        assert 1 <= s["l0"] <= 128, (fam, s)
