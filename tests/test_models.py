"""load_model: local HF checkpoints (the offline path for real models), official names, errors."""

from pathlib import Path

import json

import pytest
import torch
from helpers import assert_cli_user_error
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from saelens_amort import SaeAmortError, load_model

# EleutherAI/pythia-160m-deduped's config.json, written out so no download is needed.
PYTHIA_160M = dict(
    architectures=["GPTNeoXForCausalLM"],
    bos_token_id=0,
    eos_token_id=0,
    hidden_act="gelu",
    hidden_size=768,
    initializer_range=0.02,
    intermediate_size=3072,
    layer_norm_eps=1e-05,
    max_position_embeddings=2048,
    model_type="gpt_neox",
    num_attention_heads=12,
    num_hidden_layers=12,
    rotary_emb_base=10000,
    rotary_pct=0.25,
    tie_word_embeddings=False,
    use_cache=True,
    use_parallel_residual=True,
    vocab_size=50304,
)


@pytest.fixture(scope="module")
def pythia_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    hf = GPTNeoXForCausalLM(GPTNeoXConfig(**PYTHIA_160M)).eval()
    path = tmp_path_factory.mktemp("pythia-160m-random")
    hf.save_pretrained(path)
    return path


@pytest.mark.slow
def test_local_pythia_checkpoint_matches_hf_hidden_states(pythia_dir):
    model = load_model(pythia_dir)
    assert model.cfg.n_layers == 12 and model.cfg.d_model == 768
    assert model.cfg.parallel_attn_mlp and model.cfg.positional_embedding_type == "rotary"
    tokens = torch.randint(0, 50304, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter="blocks.8.hook_resid_post", stop_at_layer=9)
        tl_acts = cache["blocks.8.hook_resid_post"]
        del model
        hf = GPTNeoXForCausalLM.from_pretrained(pythia_dir).eval()
        hf_acts = hf(tokens, output_hidden_states=True).hidden_states[9]  # output of block 8
        assert not torch.allclose(hf_acts, hf(tokens, output_hidden_states=True).hidden_states[8], atol=1e-2)
    torch.testing.assert_close(tl_acts, hf_acts, atol=1e-4, rtol=1e-4)


def test_unknown_model_name_is_one_clear_error():
    with pytest.raises(SaeAmortError, match="unknown model 'no-such-model-xyz'"):
        load_model("no-such-model-xyz")


def test_official_name_offline_and_uncached_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(SaeAmortError, match="local checkpoint directory.*--model toy"):
        load_model("pythia-160m-deduped")


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(SaeAmortError, match="no config.json"):
        load_model(tmp_path)


SMALL_NEOX = dict(architectures=["GPTNeoXForCausalLM"], model_type="gpt_neox", hidden_size=32, num_attention_heads=4,
                  num_hidden_layers=2, intermediate_size=64, vocab_size=100)
INCOMPLETE_CONFIGS = {
    "not_json": ("{\"model_type\": ", r"config\.json is not valid JSON"),
    "a_list": ("[]", r"config\.json holds a JSON list"),
    "no_architectures": (json.dumps({"model_type": "gpt_neox"}), r"config\.json is incomplete: it needs 'model_type'"),
    "no_model_type": (json.dumps({"architectures": ["GPTNeoXForCausalLM"]}), r"is incomplete"),
    "size_a_string": (json.dumps({**SMALL_NEOX, "hidden_size": "big"}), r"cannot load the checkpoint.*'hidden_size'"),
    "gpt2_without_n_ctx": (json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 32}),
                           r"config\.json lacks a field TransformerLens needs to convert it \(.*n_ctx"),
}


@pytest.mark.parametrize("case", list(INCOMPLETE_CONFIGS))
def test_incomplete_local_config_is_one_clear_cli_error(case, tmp_path, capsys):
    text, pattern = INCOMPLETE_CONFIGS[case]
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(text)
    with pytest.raises(SaeAmortError, match=pattern):
        load_model(tmp_path / "ckpt")
    (tmp_path / "f.csv").write_text("layer,feature\n1,3\n")
    out = tmp_path / "out"
    assert_cli_user_error(capsys, pattern, "alpha-sweep", "--model", str(tmp_path / "ckpt"), "--features",
                          str(tmp_path / "f.csv"), "--sae", "1=toy/topk", "--out", str(out))
    assert not out.exists()


def test_unknown_dtype(tmp_path):
    with pytest.raises(SaeAmortError, match="unknown dtype"):
        load_model("toy", dtype="float8")


def test_local_checkpoint_takes_the_saes_weight_processing_flags(tmp_path):
    """An SAE trained on a model loaded with center_writing_weights=True (gpt2-small-res-jb) gets that model from a
    local checkpoint too: every write into the residual stream has zero mean over d_model."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=100, n_positions=32, n_ctx=32)).save_pretrained(tmp_path)
    raw = load_model(tmp_path)
    centred = load_model(tmp_path, center_writing_weights=True)
    assert raw.W_out.mean(-1).abs().max() > 1e-3
    assert centred.W_out.mean(-1).abs().max() < 1e-6 and centred.W_O.mean(-1).abs().max() < 1e-6
    assert not centred.cfg.normalization_type == "LNPre"  # only the flag asked for: no LayerNorm folding
