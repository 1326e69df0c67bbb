"""The toy world's word-level tokenizer, built with the `tokenizers` library and loadable by HookedTransformer.

One id per word; the pre-tokenizer splits on whitespace and at word/punctuation boundaries (`\\w+|[^\\w\\s]+`), so
the generator's space-separated text maps word for word and decoding joins words with single spaces. Special tokens
come first, as in Pythia: `<|endoftext|>` (id 0, both BOS and EOS), `<pad>` (1), `<unk>` (2). The tokenizer adds no
special tokens itself; HookedTransformer prepends BOS.
"""

from __future__ import annotations

import json
import string
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from saelens_amort.errors import SaeAmortError
from saelens_amort.toy.corpus import vocabulary, word_annotations

EOT_TOKEN: str = "<|endoftext|>"
"""Beginning- and end-of-text token (id 0)."""
PAD_TOKEN: str = "<pad>"
"""Padding token (id 1)."""
UNK_TOKEN: str = "<unk>"
"""Unknown-word token (id 2)."""
SPECIAL_TOKENS: tuple[str, ...] = (EOT_TOKEN, PAD_TOKEN, UNK_TOKEN)


def _word_counts(texts: Iterable[str]) -> Counter[str]:
    pre = Whitespace()
    counts: Counter[str] = Counter()
    for text in texts:
        if not isinstance(text, str):
            raise SaeAmortError(f"tokenizer training texts must be strings, got {type(text).__name__}")
        counts.update(piece for piece, _ in pre.pre_tokenize_str(text))
    for word in vocabulary():
        counts[word] += 0  # present even if the texts never use it
    for special in SPECIAL_TOKENS:
        counts.pop(special, None)
    return counts


def build_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """An in-memory tokenizer over the words of `texts` plus `vocabulary()`.

    Ids: special tokens, then words by descending count, ties broken alphabetically, so the same texts always
    give the same ids. HookedTransformer needs the reloaded form: use `train_tokenizer` for that.
    """
    counts = _word_counts(texts)
    ordered = sorted(counts, key=lambda w: (-counts[w], w))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + tuple(ordered))}
    core = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    core.pre_tokenizer = Whitespace()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=EOT_TOKEN,
        eos_token=EOT_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
    )


def train_tokenizer(texts: Iterable[str], out_dir: Path) -> PreTrainedTokenizerFast:
    """Build the tokenizer over `texts` plus `vocabulary()`, save it to `out_dir` (tokenizer.json,
    tokenizer_config.json, special_tokens_map.json) and return it reloaded from there."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(texts)
    tokenizer.save_pretrained(str(out_dir))
    # transformers 5 folds this file into tokenizer_config.json; older loaders and tools still look for it
    special = {"bos_token": EOT_TOKEN, "eos_token": EOT_TOKEN, "pad_token": PAD_TOKEN, "unk_token": UNK_TOKEN}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2, sort_keys=True) + "\n")
    return load_tokenizer(out_dir)


def load_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved by `train_tokenizer` (this form works with HookedTransformer)."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise SaeAmortError(f"no tokenizer.json in {folder}; train one with train_tokenizer first")
    return AutoTokenizer.from_pretrained(str(folder))


def token_annotations(tokenizer: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
    """Per-vocabulary-id properties from `word_annotations()`, each a tensor of length `len(tokenizer)`:
    `topic_class` (int64, -1 if none), `is_topic_word` (bool), `is_function_word` (bool), `first_letter`
    (int64 0..25, -1 for numbers, symbols and special tokens). Words the generator never emits get -1/False."""
    n = len(tokenizer)
    topic_class = torch.full((n,), -1, dtype=torch.int64)
    is_topic = torch.zeros(n, dtype=torch.bool)
    is_function = torch.zeros(n, dtype=torch.bool)
    first_letter = torch.full((n,), -1, dtype=torch.int64)
    annotations = word_annotations()
    specials = set(tokenizer.all_special_tokens)
    for token, idx in tokenizer.get_vocab().items():
        if token in specials:
            continue
        ann = annotations.get(token)
        if ann is not None:
            topic_class[idx] = ann["topic_class"]
            is_topic[idx] = ann["is_topic_word"]
            is_function[idx] = ann["is_function_word"]
        if token[0] in string.ascii_lowercase:
            first_letter[idx] = ord(token[0]) - ord("a")
    return {
        "topic_class": topic_class,
        "is_topic_word": is_topic,
        "is_function_word": is_function,
        "first_letter": first_letter,
    }
