"""The toy corpus: deterministic, balanced, and its topic words really belong to one class."""

import os
import subprocess
import sys
from collections import Counter
from itertools import islice
from pathlib import Path

import pytest

from saelens_amort.errors import SaeAmortError
from saelens_amort.toy import corpus
from saelens_amort.toy.corpus import (
    CODE_LABEL,
    DOMAINS,
    LABEL_NAMES,
    Document,
    generate_corpus,
    iter_corpus,
    topic_words,
    vocabulary,
    word_annotations,
)


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    return generate_corpus(1500, seed=0)


def test_public_constants():
    assert LABEL_NAMES == ("world", "sports", "business", "science", "code")
    assert DOMAINS == ("news", "code")


def test_same_seed_same_corpus_different_seed_different(docs):
    assert generate_corpus(1500, seed=0) == docs
    assert generate_corpus(50, seed=1) != docs[:50]
    assert generate_corpus(50, seed=0, code_fraction=0.5) != docs[:50]


def test_deterministic_across_processes(docs):
    """A fresh interpreter with another string-hash seed gives the same documents (no hash(), no global RNG)."""
    # stub the package folders so the child imports only corpus.py and errors.py, not torch (keeps this fast)
    root = Path(corpus.__file__).resolve().parents[1]
    code = (
        "import sys, types\n"
        f"for name, path in (('saelens_amort', {str(root)!r}), ('saelens_amort.toy', {str(root / 'toy')!r})):\n"
        "    sys.modules[name] = types.ModuleType(name); sys.modules[name].__path__ = [path]\n"
        "from saelens_amort.toy.corpus import generate_corpus\n"
        "print(repr(generate_corpus(20, seed=0)))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == repr(docs[:20])


def test_stream_is_the_list_and_endless(docs):
    assert list(islice(iter_corpus(None, seed=0), 1500)) == docs
    assert generate_corpus(10, seed=0) == docs[:10]
    assert generate_corpus(0) == []


def test_every_label_and_domain_present_and_news_balanced(docs):
    labels = Counter(d.label for d in docs)
    assert set(labels) == set(range(len(LABEL_NAMES)))
    assert {d.domain for d in docs} == set(DOMAINS)
    assert all((d.domain == "code") == (d.label == CODE_LABEL) for d in docs)
    news = [labels[c] for c in range(CODE_LABEL)]
    assert max(news) / min(news) < 1.25
    assert abs(labels[CODE_LABEL] / len(docs) - 0.2) < 0.04


def test_code_fraction_extremes():
    assert all(d.domain == "code" for d in generate_corpus(30, code_fraction=1.0))
    assert all(d.domain == "news" for d in generate_corpus(30, code_fraction=0.0))


def test_text_format_and_document_length(docs):
    for d in docs:
        assert d.text == d.text.strip() and "  " not in d.text and d.text == d.text.lower()
        ends = d.text.count(" . ") + d.text.endswith(" .") if d.domain == "news" else None
        if ends is not None:
            assert corpus.DOC_SENTENCES[0] <= ends <= corpus.DOC_SENTENCES[1]
        else:
            lines = d.text.count(" ;") + d.text.count(" :")
            assert lines >= corpus.DOC_SENTENCES[0]


def test_every_emitted_word_is_in_the_vocabulary(docs):
    vocab = set(vocabulary())
    assert len(vocab) == len(vocabulary())
    assert {w for d in docs for w in d.text.split(" ")} <= vocab


def test_word_lists_do_not_overlap():
    """A word belongs to one topic class (or none); otherwise the annotations would lie."""
    lists = [set(corpus._FUNCTION_WORDS), set(corpus._NUMBERS), set(corpus._PUNCTUATION), set(corpus._TIMES)]
    lists += [set(ws) for ws in corpus._GENERIC.values()]
    lists += [set(ws) for cls in corpus._TOPIC_WORDS.values() for ws in cls.values()]
    lists.append(set(corpus._CODE_WORDS))
    seen: Counter[str] = Counter(w for ws in lists for w in ws)
    assert [w for w, n in seen.items() if n > 1] == []


def test_topic_words_appear_only_in_their_class(docs):
    ann = word_annotations()
    for d in docs:
        classes = {ann[w]["topic_class"] for w in d.text.split(" ")} - {-1}
        assert classes == {d.label}, d


def test_class_sizes_and_noise_rate(docs):
    for label in range(CODE_LABEL):
        assert 40 <= len(topic_words(label)) <= 80
    # generic verbs other than the literal "said" appear only as noise in verb slots
    ann = word_annotations()
    words = [w for d in docs if d.domain == "news" for w in d.text.split(" ")]
    topic_verbs = sum(ann[w]["kind"] == "verb" for w in words)
    noise = sum(ann[w]["kind"] == "generic_verb" and w != "said" for w in words)
    generic_verbs = corpus._GENERIC["verb"]
    expected = corpus.NOISE_RATE * (len(generic_verbs) - 1) / len(generic_verbs)
    assert noise / (noise + topic_verbs) == pytest.approx(expected, abs=0.02)


def test_annotations_describe_the_words():
    ann = word_annotations()
    assert set(ann) == set(vocabulary())
    sports = LABEL_NAMES.index("sports")
    assert ann["striker"] == {**ann["striker"], "topic_class": sports, "is_topic_word": True, "first_letter": "s"}
    assert ann["the"]["is_function_word"] and not ann["the"]["is_topic_word"] and ann["the"]["topic_class"] == -1
    assert ann["."]["first_letter"] == "" and ann["2004"]["first_letter"] == ""
    assert ann["def"]["topic_class"] == CODE_LABEL and ann["in"]["topic_class"] == -1
    assert all(a["is_topic_word"] == (a["topic_class"] >= 0) for a in ann.values())
    assert "striker" in topic_words(sports)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_docs": -1},
        {"n_docs": 2.5},
        {"n_docs": 3, "code_fraction": 1.5},
        {"n_docs": 3, "code_fraction": -0.1},
        {"n_docs": 3, "code_fraction": float("nan")},
        {"n_docs": 3, "seed": "0"},
    ],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(SaeAmortError):
        iter_corpus(**kwargs)  # raises before iteration starts
    with pytest.raises(SaeAmortError):
        generate_corpus(**kwargs)


def test_generate_needs_finite_count_and_topic_words_a_label():
    with pytest.raises(SaeAmortError):
        generate_corpus(None)
    with pytest.raises(SaeAmortError):
        topic_words(len(LABEL_NAMES))
