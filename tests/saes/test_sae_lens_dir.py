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
