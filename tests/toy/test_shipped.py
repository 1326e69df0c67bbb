"""The shipped toy world loads through the public API: model, tokenizer, every SAE family, hook fit."""

import pytest
import torch
from sae_lens import GatedSAE, JumpReLUSAE, StandardSAE, TopKSAE

from saelens_amort import check_sae_fits, load_model, load_sae
from saelens_amort.saes import TOY_SAE_FAMILIES
from saelens_amort.toy.paths import TOY_HOOK

EXPECTED_CLASS = {
    "standard": StandardSAE,
    "topk": TopKSAE,
    "batchtopk": JumpReLUSAE,
    "matryoshka_batchtopk": JumpReLUSAE,
    "jumprelu": JumpReLUSAE,
    "gated": GatedSAE,
}


@pytest.fixture(scope="module")
def toy_model():
    return load_model("toy")


def test_toy_model_is_a_small_neox(toy_model):
    cfg = toy_model.cfg
    assert cfg.original_architecture == "GPTNeoXForCausalLM"
    assert cfg.parallel_attn_mlp and cfg.positional_embedding_type == "rotary"
    assert cfg.n_layers == 4 and 128 <= cfg.d_model <= 256


def test_toy_model_predicts_topic_words_from_context(toy_model):
    # after a sports-heavy context the model must prefer a sports word over a science word for the object slot
    prompt = "the coach benched the striker . the team won the match at the stadium . the coach tackled the"
    logits = toy_model(prompt)[0, -1]
    tok = toy_model.tokenizer
    sports = [tok.convert_tokens_to_ids(w) for w in ("goal", "match", "trophy", "striker")]
    science = [tok.convert_tokens_to_ids(w) for w in ("protein", "telescope", "orbit", "laboratory")]
    assert logits[sports].logsumexp(0) > logits[science].logsumexp(0) + 2.0


@pytest.mark.parametrize("family", TOY_SAE_FAMILIES)
def test_every_toy_sae_loads_and_fits(toy_model, family):
    sae = load_sae(f"toy/{family}")
    assert isinstance(sae, EXPECTED_CLASS[family])
    assert check_sae_fits(sae, toy_model) == TOY_HOOK
    assert sae.cfg.d_sae >= 8 * sae.cfg.d_in
    with torch.no_grad():
        _, cache = toy_model.run_with_cache("the senator elected the parliament .", names_filter=TOY_HOOK)
        acts = cache[TOY_HOOK][0, 1:]
        recon = sae.decode(sae.encode(acts))
    assert ((recon - acts) ** 2).sum() < 0.5 * (acts**2).sum()
