"""SAEBench suite specs: parsing, the default suites, and loading through the real huggingface_hub cache lookup.

The cache is laid out by the test exactly as huggingface_hub writes it (refs/main → snapshots/<commit>/…), with a
dictionary_learning checkpoint at the suite's folder path; `snapshot_download(local_files_only=True)` finds it."""

import pytest
from helpers import build_random_dictionary_learning_ae, import_dictionary_learning, write_dictionary_learning_dir

from saelens_amort import SaeAmortError
from saelens_amort.saes import load_sae
from saelens_amort.saes.suites import FAMILIES, default_suite, folder, parse_spec, repo_id


def test_parse_and_defaults():
    assert parse_spec("saebench:TopK/trainer_2") == ("2pow14", "TopK", 2)
    assert parse_spec("saebench:2pow16/GatedSAE/trainer_11") == ("2pow16", "GatedSAE", 11)
    assert folder("TopK", 2) == "TopK_pythia-160m-deduped__0108/resid_post_layer_8/trainer_2"
    suite = default_suite("pythia-160m-deduped", 8)
    assert len(suite) == len(FAMILIES) and all(s.startswith("saebench:2pow14/") for s in suite)
    assert default_suite("toy", 2)[0] == "toy/standard"
    for bad, msg in [("saebench:Nope/trainer_1", "unknown SAEBench family"),
                     ("saebench:2pow3/TopK/trainer_1", "unknown SAEBench width"),
                     ("saebench:TopK", "cannot read SAEBench spec")]:
        with pytest.raises(SaeAmortError, match=msg):
            parse_spec(bad)
    with pytest.raises(SaeAmortError, match="saeamort eval --model toy"):
        default_suite("gpt2", 8)


def _fake_cache(root, width, sub, dict_class):
    repo = root / ("models--" + repo_id(width).replace("/", "--"))
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    ae = build_random_dictionary_learning_ae(dict_class, activation_dim=32, dict_size=128, seed=5)
    write_dictionary_learning_dir(repo / "snapshots" / commit / sub, ae, dict_class)
    return ae


def test_loads_from_hf_cache_offline(tmp_path, monkeypatch):
    if import_dictionary_learning() is None:
        pytest.skip("dictionary_learning not installed")
    import huggingface_hub.constants as hf_constants
    import torch

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ae = _fake_cache(tmp_path, "2pow12", folder("TopK", 3), "AutoEncoderTopK")
    sae = load_sae("saebench:2pow12/TopK/trainer_3")
    assert type(sae).__name__ == "TopKSAE" and sae.cfg.d_sae == 128
    x = torch.randn(16, 32)
    torch.testing.assert_close(sae.encode(x), ae.encode(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(SaeAmortError, match="hf download .*--include 'JumpRelu_pythia.*trainer_0/\\*'"):
        load_sae("saebench:2pow12/JumpRelu/trainer_0")
