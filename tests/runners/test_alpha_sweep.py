"""The α-sweep's inputs as GPT-2 res-jb studies bring them: a YAML for the whole sweep, a Neuronpedia list export,
an SAE-Lens release with a layer range; run end to end on the toy world with local stand-in SAEs."""

import json

import pandas as pd
import pytest
import torch
import yaml
from helpers import assert_cli_user_error, run_cli
from sae_lens import StandardSAE, StandardSAEConfig

PRE_HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module")
def pre_sae_dir(tmp_path_factory):
    """A res-jb-like stand-in: layer 1's SAE reads blocks.1.hook_resid_pre and fires everywhere."""
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=128, d_sae=64))
    with torch.no_grad():
        sae.b_enc.fill_(0.5)
    sae.cfg.metadata.hook_name = PRE_HOOK
    path = tmp_path_factory.mktemp("saes") / "1-res-jb"
    sae.save_model(str(path))
    return path


def test_yaml_sweep_with_a_neuronpedia_export(pre_sae_dir, tmp_path, capsys):
    export = [{"modelId": "toy", "layer": "1-res-jb", "index": "3", "description": "stand-in"},
              {"modelId": "toy", "layer": "toy/2-res-jb", "index": "5", "description": ""}]
    (tmp_path / "np.json").write_text(json.dumps(export))
    out = tmp_path / "out"
    sweep = {"model": "toy", "features": str(tmp_path / "np.json"), "saes": {1: str(pre_sae_dir), 2: "toy/topk"},
             "alphas": [0, 1], "sequences": 4, "context_size": 32, "out": str(out)}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    code, err = run_cli(capsys, "alpha-sweep", "--config", str(tmp_path / "sweep.yaml"), "--alphas", "0,1,2")
    assert code == 0, err
    per = pd.read_csv(out / "per_feature_metrics.csv")
    layer1 = per[per["layer"] == 1]
    assert sorted(layer1["alpha"]) == [0.0, 1.0, 2.0]  # --alphas overrides the file's [0, 1]
    assert set(layer1["hook"]) == {PRE_HOOK} and set(layer1["label"]) == {"stand-in"}  # the SAE's own hook
    assert set(per[per["layer"] == 2]["hook"]) <= {"blocks.2.hook_resid_post"}
    assert (per[per["alpha"] == 1.0]["delta_ce"].abs() < 1e-5).all() and (layer1[layer1["alpha"] == 0]["kl"] > 0).all()
    assert json.loads((out / "snippets.json").read_text()).keys() >= {"1/3"}


BAD_SWEEPS = {
    "saes_a_list": ({"saes": ["2=toy/topk"]}, r"saes must be a mapping of layers to SAE specs"),
    "layers_a_dict": ({"layers": {"a": 1}}, r"layers must be a range like 0-11"),
    "alphas_words": ({"alphas": ["big"]}, r"alphas must be a list of numbers, got \['big'\]"),
    "sequences_a_word": ({"sequences": "many"}, r"sequences must be an integer"),
    "unknown_key": ({"sae": {2: "toy/topk"}}, r"unknown keys \['sae'\]"),
    "layers_without_release": ({"layers": "0-3"}, r"--layers picks layers of a release; pass --release too"),
}


@pytest.mark.parametrize("case", list(BAD_SWEEPS))
def test_bad_sweep_yaml_is_one_clear_error(case, tmp_path, capsys):
    data, pattern = BAD_SWEEPS[case]
    (tmp_path / "f.csv").write_text("layer,feature\n2,3\n")
    out = tmp_path / "out"
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"features": str(tmp_path / "f.csv"), "out": str(out),
                                                         **data}))
    assert_cli_user_error(capsys, pattern, "alpha-sweep", "--config", str(tmp_path / "sweep.yaml"))
    assert not out.exists()


def test_release_and_layer_range_reach_the_loader(tmp_path, capsys):
    """--release/--layers resolve to the release's real SAE ids; offline and uncached, loading them is one error."""
    (tmp_path / "np.csv").write_text("modelId,layer,index\ngpt2-small,0-res-jb,7\n")
    out = tmp_path / "out"
    assert_cli_user_error(capsys, r"SAE gpt2-small-res-jb/blocks\.0\.hook_resid_pre is not in the local Hugging Face "
                          r"cache", "alpha-sweep", "--release", "gpt2-small-res-jb", "--layers", "0-11",
                          "--features", str(tmp_path / "np.csv"), "--out", str(out))
    assert not out.exists()


def test_saes_trained_on_differently_loaded_models_are_refused(pre_sae_dir, tmp_path, capsys):
    from sae_lens import SAE

    other = SAE.load_from_disk(pre_sae_dir)
    other.cfg.metadata.model_from_pretrained_kwargs = {"center_writing_weights": True}
    other.cfg.metadata.hook_name = "blocks.2.hook_resid_post"
    other.save_model(str(tmp_path / "centred"))
    (tmp_path / "f.csv").write_text("layer,feature\n1,3\n2,3\n")
    out = tmp_path / "out"
    assert_cli_user_error(capsys, r"trained on differently loaded models \(model_from_pretrained_kwargs \{\} vs "
                          r"\{'center_writing_weights': True\}\); sweep them "
                          "separately", "alpha-sweep", "--features", str(tmp_path / "f.csv"), "--sae",
                          f"1={pre_sae_dir}", "--sae", f"2={tmp_path / 'centred'}", "--out", str(out))
    assert not out.exists()
