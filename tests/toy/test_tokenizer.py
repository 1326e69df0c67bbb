"""The toy tokenizer: one id per generator word, deterministic, annotated, and usable by HookedTransformer."""

import json

import pytest
import torch
from tokenizers.pre_tokenizers import Whitespace

from saelens_amort.errors import SaeAmortError
from saelens_amort.toy.corpus import LABEL_NAMES, generate_corpus, vocabulary, word_annotations
from saelens_amort.toy.tokenizer import EOT_TOKEN, load_tokenizer, token_annotations, train_tokenizer


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [d.text for d in generate_corpus(300, seed=0)]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, texts):
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(texts, out)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load_tokenizer(tok_dir)


def test_saved_files_and_special_tokens(tok_dir, tok):
    assert {p.name for p in tok_dir.iterdir()} >= {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    assert tok.convert_ids_to_tokens([0, 1, 2]) == [EOT_TOKEN, "<pad>", "<unk>"]
    assert tok.bos_token_id == tok.eos_token_id == 0 and tok.pad_token_id == 1 and tok.unk_token_id == 2
    assert tok.vocab_size == len(tok) == len(vocabulary()) + 3
    assert tok("the team", add_special_tokens=True)["input_ids"] == tok("the team", add_special_tokens=False)[
        "input_ids"
    ]


def test_every_vocabulary_word_is_one_pretoken_and_one_id(tok):
    pre = Whitespace()
    for word in vocabulary():
        assert [p for p, _ in pre.pre_tokenize_str(word)] == [word]
    ids = tok.convert_tokens_to_ids(vocabulary())
    assert tok.unk_token_id not in ids and len(set(ids)) == len(ids)


def test_no_unk_and_round_trip_on_generated_text(tok):
    for doc in generate_corpus(200, seed=7, code_fraction=0.5):
        ids = tok(doc.text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert len(ids) == len(doc.text.split(" "))
        assert tok.decode(ids) == doc.text


def test_unknown_words_map_to_unk(tok):
    assert tok("the zyzzyva won", add_special_tokens=False)["input_ids"][1] == tok.unk_token_id


def test_training_is_deterministic(tmp_path, tok_dir, texts):
    train_tokenizer(list(texts), tmp_path / "again")
    assert (tmp_path / "again" / "tokenizer.json").read_bytes() == (tok_dir / "tokenizer.json").read_bytes()
    # frequent words get small ids; generator words absent from the texts still get an id
    vocab = json.loads((tok_dir / "tokenizer.json").read_text())["model"]["vocab"]
    assert vocab["the"] < vocab["striker"]
    only_vocab = train_tokenizer([], tmp_path / "empty")
    assert len(only_vocab) == len(vocabulary()) + 3


def test_token_annotations_are_aligned(tok):
    ann = token_annotations(tok)
    n = len(tok)
    assert ann["topic_class"].shape == ann["first_letter"].shape == (n,)
    assert ann["topic_class"].dtype == ann["first_letter"].dtype == torch.int64
    assert ann["is_topic_word"].dtype == ann["is_function_word"].dtype == torch.bool
    striker = tok.convert_tokens_to_ids("striker")
    assert ann["topic_class"][striker] == LABEL_NAMES.index("sports")
    assert ann["first_letter"][striker] == ord("s") - ord("a") and ann["is_topic_word"][striker]
    the = tok.convert_tokens_to_ids("the")
    assert ann["is_function_word"][the] and ann["topic_class"][the] == -1 and ann["first_letter"][the] == ord("t") - 97
    for special in (tok.bos_token_id, tok.pad_token_id, tok.unk_token_id, tok.convert_tokens_to_ids(".")):
        assert ann["first_letter"][special] == -1 and ann["topic_class"][special] == -1
    words = word_annotations()
    for word, idx in tok.get_vocab().items():
        if word in words:
            assert ann["topic_class"][idx] == words[word]["topic_class"]
            assert bool(ann["is_function_word"][idx]) == words[word]["is_function_word"]


def test_works_with_hooked_transformer(tok_dir):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tok = load_tokenizer(tok_dir)
    cfg = HookedTransformerConfig(
        n_layers=1, d_model=16, d_head=4, n_heads=4, d_mlp=32, n_ctx=32, d_vocab=len(tok), act_fn="gelu",
        normalization_type="LN", positional_embedding_type="rotary", rotary_dim=4, parallel_attn_mlp=True,
        original_architecture="GPTNeoXForCausalLM",
    )  # fmt: skip
    model = HookedTransformer(cfg, tokenizer=tok)
    text = "the team won the match ."
    tokens = model.to_tokens(text)
    assert tokens[0, 0].item() == tok.bos_token_id
    assert tok.unk_token_id not in tokens.tolist()[0] and tokens.shape[1] == len(text.split()) + 1
    assert model.to_string(tokens[0, 1:]) == text
    assert model(tokens).shape == (1, tokens.shape[1], len(tok))


def test_bad_inputs_raise(tmp_path):
    with pytest.raises(SaeAmortError):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(SaeAmortError):
        train_tokenizer([b"bytes are not text"], tmp_path / "bad")
