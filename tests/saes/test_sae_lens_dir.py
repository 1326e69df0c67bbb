"""Broken SAE-Lens directories (cfg.json not JSON or without sizes, d_in that disagrees with the weights, truncated or
mismatched safetensors) are one user error through the real CLI: exit 2, one stderr line, nothing written."""

import json
import shutil

import pytest
import torch
from helpers import assert_cli_user_error
from safetensors.torch import load_file, save_file
from sae_lens import StandardSAE, StandardSAEConfig

from saelens_amort import SaeAmortError
from saelens_amort.saes import load_sae


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=128, d_sae=64))
    sae.cfg.metadata.hook_name = "blocks.2.hook_resid_post"
    path = tmp_path_factory.mktemp("sae") / "good"
    sae.save_model(str(path))
    return path


def _edit_cfg(**changes):
    def edit(path):
        cfg = json.loads((path / "cfg.json").read_text())
        for key, value in changes.items():
            if value is None:
                cfg.pop(key)
            else:
                cfg[key] = value
        (path / "cfg.json").write_text(json.dumps(cfg))
    return edit


def _truncate(path):
    weights = path / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])


def _drop_b_enc(path):
    state = load_file(path / "sae_weights.safetensors")
    del state["b_enc"]
    save_file(state, path / "sae_weights.safetensors")


BROKEN = {
    "cfg_not_json": (lambda p: (p / "cfg.json").write_text("{d_in: 128,"), r"cfg\.json is not valid JSON"),
    "cfg_a_list": (lambda p: (p / "cfg.json").write_text("[128, 64]"), r"cfg\.json holds a JSON list"),
    "no_architecture": (_edit_cfg(architecture=None), r"names no 'architecture'"),
    "d_in_missing": (_edit_cfg(d_in=None), r"d_in must be a positive integer, got None"),
    "d_in_a_string": (_edit_cfg(d_in="128"), r"d_in must be a positive integer, got '128'"),
    "wrong_d_in": (_edit_cfg(d_in=96), r"W_enc of shape \[128, 64\] but cfg\.json says d_in=96, d_sae=64"),
    "wrong_d_sae": (_edit_cfg(d_sae=32), r"W_enc of shape \[128, 64\] but cfg\.json says d_in=128, d_sae=32"),
    "truncated": (_truncate, r"sae_weights\.safetensors is truncated or not a safetensors file"),
    "empty_weights": (lambda p: (p / "sae_weights.safetensors").write_bytes(b""), r"truncated or not a safetensors"),
    "missing_tensor": (_drop_b_enc, r"does not load as an SAE-Lens 'standard' SAE .*Missing key.*b_enc"),
    "no_dtype": (_edit_cfg(dtype=None), r"cfg\.json lacks 'dtype', which SAE-Lens needs for a 'standard' SAE"),
    "unknown_architecture": (_edit_cfg(architecture="mystery"), r"names architecture 'mystery' that SAE-Lens does not"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_directory_is_one_clear_error(case, good_dir, tmp_path, capsys):
    breaker, pattern = BROKEN[case]
    broken = tmp_path / case
    shutil.copytree(good_dir, broken)
    breaker(broken)
    with pytest.raises(SaeAmortError, match=pattern):
        load_sae(str(broken))
    (tmp_path / "f.csv").write_text("layer,feature\n2,3\n")
    out = tmp_path / "out"
    assert_cli_user_error(capsys, pattern, "alpha-sweep", "--features", str(tmp_path / "f.csv"),
                          "--sae", f"2={broken}", "--sequences", "2", "--out", str(out))
    assert not out.exists()


def test_intact_directory_still_loads_exactly(good_dir):
    sae = load_sae(str(good_dir))
    torch.testing.assert_close(sae.W_enc, load_file(good_dir / "sae_weights.safetensors")["W_enc"])


def _topk_dir(path, **changes):
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(1)
    sae = TopKSAE(TopKSAEConfig(d_in=128, d_sae=64, k=6))
    sae.save_model(str(path))
    _edit_cfg(**changes)(path)
    return path


@pytest.mark.parametrize(("changes", "pattern"), [
    ({"k": None}, r"has no 'k' for its 'topk' SAE"),
    ({"k": 65}, r"k must be an integer in \[1, d_sae=64\], got 65"),
    ({"k": 0}, r"k must be an integer in \[1, d_sae=64\], got 0"),
])
def test_a_topk_k_missing_or_past_the_dictionary_is_one_clear_error(tmp_path, changes, pattern):
    """SAE-Lens fills a missing k with its default (100) and would run the SAE at a sparsity it never had; a k past
    d_sae fails only in the first encode."""
    with pytest.raises(SaeAmortError, match=pattern):
        load_sae(str(_topk_dir(tmp_path / "sae", **changes)))
    assert load_sae(str(_topk_dir(tmp_path / "ok"))).cfg.k == 6


@pytest.mark.parametrize("family", ["batchtopk", "matryoshka_batchtopk"])
def test_trainer_checkpoints_of_training_only_architectures_load_in_inference_form(tmp_path, family):
    """SAE-Lens' trainer (and `saeamort train --checkpoint-every`) saves BatchTopK / Matryoshka checkpoints in
    training form, whose architecture the inference registry does not know: they load as SAE-Lens' own
    save_inference_model converts them (JumpReLU with the learned threshold)."""
    from sae_lens import (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, MatryoshkaBatchTopKTrainingSAE,
                          MatryoshkaBatchTopKTrainingSAEConfig)
    from sae_lens import SAE

    torch.manual_seed(2)
    if family == "batchtopk":
        training = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=32, d_sae=96, k=5))
    else:
        training = MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(
            d_in=32, d_sae=96, k=5, matryoshka_widths=[24, 48, 96]))
    training.topk_threshold.fill_(0.05)
    training.save_model(str(tmp_path / "ckpt"))
    training.save_inference_model(str(tmp_path / "inference"))
    loaded = load_sae(str(tmp_path / "ckpt"))
    reference = SAE.load_from_disk(tmp_path / "inference")
    assert type(loaded) is type(reference) and loaded.cfg.architecture() == "jumprelu"
    x = 10 * torch.randn(64, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), reference.encode(x), rtol=0, atol=0)
        assert (loaded.encode(x) > 0).any()
