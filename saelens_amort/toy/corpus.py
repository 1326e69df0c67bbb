"""The toy world's labelled corpus: seeded AG-News-like news in four topics, plus python-like code as a second domain.

Every news document belongs to one topic class and draws all of its *topic words* (class-specific nouns, verbs,
adjectives and named entities) from that class only. The noise model is the only exception to "topic words predict
the class", and it never puts another class's word in a document: each topic slot is filled, with probability
`NOISE_RATE`, by a *generic* content word shared by all classes instead. Templates add shared function words,
numbers, days and punctuation. Code documents are tiny python-like functions whose identifiers, keywords and
operators are code-only words (topic class `code`), apart from a few tokens shared with news (`in for , .` numbers).

Text is lowercase with single spaces between words and punctuation as separate words, so splitting on spaces gives
the words back; `vocabulary()` lists every word the generator can emit.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from saelens_amort.errors import SaeAmortError

LABEL_NAMES: tuple[str, ...] = ("world", "sports", "business", "science", "code")
"""Class names; a `Document.label` indexes this tuple."""

DOMAINS: tuple[str, ...] = ("news", "code")
"""Domains: the four topic classes are "news"; the `code` class is its own domain."""

NEWS_LABELS: tuple[int, ...] = (0, 1, 2, 3)
"""Labels of the news classes."""

CODE_LABEL: int = LABEL_NAMES.index("code")
"""Label of the code class."""

NOISE_RATE: float = 0.08
"""Probability that a topic slot of a news sentence is filled by a generic (shared) content word instead."""

DOC_SENTENCES: tuple[int, int] = (3, 8)
"""Inclusive range of sentences (news) or lines (code) per document."""


def _w(words: str) -> tuple[str, ...]:
    return tuple(words.split())


@dataclass(frozen=True)
class Document:
    """One generated document."""

    text: str
    """Words separated by single spaces, lowercase, punctuation as separate words."""
    label: int
    """Index into `LABEL_NAMES`."""
    domain: str
    """"news" or "code"."""


# --- class-specific topic words: part of speech -> words -------------------------------------------------------------

_TOPIC_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "world": {
        "noun": _w("government minister president election parliament treaty border army troops rebels embassy "
                   "diplomat refugees protest ceasefire summit ballot senator coalition sanctions talks regime "
                   "militia envoy"),
        "verb": _w("condemned invaded negotiated elected ruled protested evacuated deployed sanctioned accused "
                   "captured bombed"),
        "adj": _w("diplomatic military foreign political civil humanitarian armed electoral hostile sovereign"),
        "entity": _w("iraq israel moscow beijing kabul tehran ukraine nato baghdad pakistan syria brussels gaza "
                     "sudan kremlin"),
    },
    "sports": {
        "noun": _w("team match coach striker goal season league championship tournament player victory final "
                   "stadium fans medal trophy quarterback pitcher inning referee squad race olympics playoffs"),
        "verb": _w("won scored defeated beat signed tackled played clinched equalized sprinted drafted benched"),
        "adj": _w("unbeaten athletic defensive offensive olympic seeded injured undefeated sporting varsity"),
        "entity": _w("yankees lakers chelsea arsenal madrid barcelona federer nadal wimbledon nfl nba ferrari "
                     "dodgers celtics"),
    },
    "business": {
        "noun": _w("company shares stock profit revenue investors market merger bank earnings dollar economy "
                   "quarter deal oil prices ceo retailer bonds inflation analysts acquisition sales firm"),
        "verb": _w("acquired invested reported rose fell traded earned merged sold bought cut forecast"),
        "adj": _w("financial quarterly corporate fiscal economic profitable bullish bearish wholesale annual"),
        "entity": _w("microsoft google ibm oracle walmart boeing nasdaq exxon intel yahoo citigroup airbus sony "
                     "dow"),
    },
    "science": {
        "noun": _w("scientists researchers study software computer spacecraft planet genome virus species "
                   "telescope satellite laboratory molecule internet robot orbit protein climate fossil "
                   "algorithm processor chip vaccine"),
        "verb": _w("discovered launched developed observed measured analyzed sequenced tested detected orbited "
                   "simulated patented"),
        "adj": _w("scientific genetic digital solar quantum chemical biological wireless experimental microscopic"),
        "entity": _w("nasa mars jupiter saturn linux hubble cern darwin einstein antarctica galileo cassini esa "
                     "mozilla"),
    },
}

# --- shared words ----------------------------------------------------------------------------------------------------

_GENERIC: dict[str, tuple[str, ...]] = {
    "noun": _w("people year week month officials report plan group time news city country record statement "
               "future number problem change sources spokesman"),
    "verb": _w("said announced made took showed began expected gave saw faced"),
    "adj": _w("new major big first last recent local large small top early late important"),
    "entity": _w("london washington europe america china india japan africa"),
}
"""Shared content words: they fill generic template slots in every class and replace topic words as noise."""

_TIMES: tuple[str, ...] = _w("monday tuesday wednesday thursday friday saturday sunday yesterday today")
_DETERMINERS: tuple[str, ...] = _w("the the the the a this its their")
_PREPOSITIONS: tuple[str, ...] = _w("in at near after during against with over for from")
_FUNCTION_WORDS: tuple[str, ...] = _w(
    "the a an this that its their his her of in on at to for with by from after before during over against "
    "near and but while as was were is has had will be been it they he she who which than more also not"
)
_NUMBERS: tuple[str, ...] = _w("0 1 2 3 4 5 6 7 8 9 10 12 15 20 25 30 40 50 100 1000 2003 2004")
_PUNCTUATION: tuple[str, ...] = _w(". ,")

_NEWS_TEMPLATES: tuple[str, ...] = (
    "D A N V D N P E .",
    "E V D N P D A N .",
    "D N of E V NUM N P T .",
    "in E , D N V D A N .",
    "D A N was V by D N , D G said .",
    "E and E V D N P T .",
    "after D A N , D N V NUM N .",
    "D N has V D N of E .",
    "D G said D N V D A N P E .",
    "NUM N V P E P T , D G said .",
    "D GA G said D A N will be V P GE .",
)
"""News sentence templates. Topic slots: N noun, V verb, A adjective, E entity. Shared slots: G generic noun,
GA generic adjective, GE generic entity, D determiner, P preposition, T time word, NUM number. Other words are
literal."""

# --- code domain -----------------------------------------------------------------------------------------------------

_CODE_FUNCS: tuple[str, ...] = _w("foo bar compute parse update load save process helper main init check build "
                                  "render apply fetch")
_CODE_IDS: tuple[str, ...] = _w("x y z i j k n b c val data items result total count key idx buf node tmp acc "
                                "arr lst res out")
_CODE_KEYWORDS: tuple[str, ...] = _w("def return if else range print append len none true false")
_CODE_OPS: tuple[str, ...] = _w("+ - * / %")
_CODE_CMPS: tuple[str, ...] = _w("== != < > <= >=")
_CODE_SYMBOLS: tuple[str, ...] = _w("= ( ) [ ] : ;")
_CODE_SMALL_NUMBERS: tuple[str, ...] = _NUMBERS[:12]

_CODE_BODY_TEMPLATES: tuple[str, ...] = (
    "ID = F ( ID , NUM ) ;",
    "ID = ID OP ID ;",
    "if ID CMP NUM :",
    "for ID in range ( NUM ) :",
    "ID . append ( ID ) ;",
    "print ( ID ) ;",
    "while ID CMP ID :",
    "ID [ ID ] = NUM ;",
    "ID = len ( ID ) OP NUM ;",
    "if not ID :",
    "else :",
    "ID = none ;",
    "ID = true ;",
    "ID = false ;",
)
"""Code body lines; the first line of a function is `def F ( ID , ID ) :` and the last `return ID OP ID ;`."""

_CODE_WORDS: tuple[str, ...] = _CODE_FUNCS + _CODE_IDS + _CODE_KEYWORDS + _CODE_OPS + _CODE_CMPS + _CODE_SYMBOLS
"""Code-only words (topic class `code`); `in for not while , .` and numbers are shared with news."""


# --- generation ------------------------------------------------------------------------------------------------------


def _news_sentence(rng: random.Random, words: dict[str, tuple[str, ...]], focus: dict[str, tuple[str, ...]]) -> str:
    out: list[str] = []
    for slot in rng.choice(_NEWS_TEMPLATES).split():
        if slot in ("N", "V", "A", "E"):
            pos = {"N": "noun", "V": "verb", "A": "adj", "E": "entity"}[slot]
            if rng.random() < NOISE_RATE:
                out.append(rng.choice(_GENERIC[pos]))
            else:
                out.append(rng.choice(focus[pos] if rng.random() < 0.5 else words[pos]))
        elif slot == "G":
            out.append(rng.choice(_GENERIC["noun"]))
        elif slot == "GA":
            out.append(rng.choice(_GENERIC["adj"]))
        elif slot == "GE":
            out.append(rng.choice(_GENERIC["entity"]))
        elif slot == "D":
            out.append(rng.choice(_DETERMINERS))
        elif slot == "P":
            out.append(rng.choice(_PREPOSITIONS))
        elif slot == "T":
            out.append(rng.choice(_TIMES))
        elif slot == "NUM":
            out.append(rng.choice(_NUMBERS))
        else:
            out.append(slot)
    for i in range(len(out) - 1):
        if out[i] == "a" and out[i + 1][0] in "aeiou":
            out[i] = "an"
    return " ".join(out)


def _news_document(rng: random.Random, label: int) -> Document:
    words = _TOPIC_WORDS[LABEL_NAMES[label]]
    # a few words per part of speech the document keeps coming back to, so context predicts them
    focus = {pos: tuple(rng.sample(ws, 3)) for pos, ws in words.items()}
    n = rng.randint(*DOC_SENTENCES)
    text = " ".join(_news_sentence(rng, words, focus) for _ in range(n))
    return Document(text=text, label=label, domain="news")


def _code_line(rng: random.Random, template: str, args: tuple[str, ...]) -> str:
    out: list[str] = []
    for slot in template.split():
        if slot == "ID":
            out.append(rng.choice(args) if rng.random() < 0.5 else rng.choice(_CODE_IDS))
        elif slot == "F":
            out.append(rng.choice(_CODE_FUNCS))
        elif slot == "OP":
            out.append(rng.choice(_CODE_OPS))
        elif slot == "CMP":
            out.append(rng.choice(_CODE_CMPS))
        elif slot == "NUM":
            out.append(rng.choice(_CODE_SMALL_NUMBERS))
        else:
            out.append(slot)
    return " ".join(out)


def _code_document(rng: random.Random) -> Document:
    n = rng.randint(*DOC_SENTENCES)
    args = tuple(rng.sample(_CODE_IDS, 2))
    lines = [f"def {rng.choice(_CODE_FUNCS)} ( {args[0]} , {args[1]} ) :"]
    lines += [_code_line(rng, rng.choice(_CODE_BODY_TEMPLATES), args) for _ in range(n - 2)]
    lines.append(_code_line(rng, "return ID OP ID ;", args))
    return Document(text=" ".join(lines), label=CODE_LABEL, domain="code")


def _validate(n_docs: int | None, seed: int, code_fraction: float) -> None:
    if n_docs is not None and (isinstance(n_docs, bool) or not isinstance(n_docs, int) or n_docs < 0):
        raise SaeAmortError(f"n_docs must be a non-negative integer or None, got {n_docs!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SaeAmortError(f"seed must be an integer, got {seed!r}")
    if (
        isinstance(code_fraction, bool)
        or not isinstance(code_fraction, (int, float))
        or math.isnan(code_fraction)
        or not 0.0 <= code_fraction <= 1.0
    ):
        raise SaeAmortError(f"code_fraction must be a number in [0, 1], got {code_fraction!r}")


def _stream(n_docs: int | None, seed: int, code_fraction: float) -> Iterator[Document]:
    rng = random.Random(seed)
    produced = 0
    while n_docs is None or produced < n_docs:
        if rng.random() < code_fraction:
            yield _code_document(rng)
        else:
            yield _news_document(rng, rng.choice(NEWS_LABELS))
        produced += 1


def iter_corpus(n_docs: int | None, seed: int = 0, code_fraction: float = 0.2) -> Iterator[Document]:
    """Stream `n_docs` documents (None: endlessly), deterministic per (seed, code_fraction).

    Each document is code with probability `code_fraction`, else news of a uniformly drawn topic. One random
    stream per call, so a shorter corpus is a prefix of a longer one with the same seed. Arguments are checked
    here, not at the first `next()`.
    """
    _validate(n_docs, seed, code_fraction)
    return _stream(n_docs, seed, code_fraction)


def generate_corpus(n_docs: int, seed: int = 0, code_fraction: float = 0.2) -> list[Document]:
    """`n_docs` documents as a list: exactly `list(iter_corpus(n_docs, seed, code_fraction))`."""
    if n_docs is None:
        raise SaeAmortError("generate_corpus needs a finite n_docs; use iter_corpus(None, ...) for a stream")
    return list(iter_corpus(n_docs, seed=seed, code_fraction=code_fraction))


# --- vocabulary and annotations --------------------------------------------------------------------------------------


def _word_kinds() -> dict[str, tuple[str, int]]:
    """word -> (kind, topic class), in a fixed order; a word listed twice keeps its first entry."""
    kinds: dict[str, tuple[str, int]] = {}

    def add(words: tuple[str, ...], kind: str, topic_class: int) -> None:
        for word in words:
            kinds.setdefault(word, (kind, topic_class))

    add(_FUNCTION_WORDS, "function", -1)
    add(_PUNCTUATION, "punctuation", -1)
    add(_NUMBERS, "number", -1)
    add(_TIMES, "time", -1)
    for pos, words in _GENERIC.items():
        add(words, f"generic_{pos}", -1)
    for label, name in enumerate(LABEL_NAMES[:CODE_LABEL]):
        for pos, words in _TOPIC_WORDS[name].items():
            add(words, pos, label)
    add(_CODE_WORDS, "code", CODE_LABEL)
    return kinds


def topic_words(label: int) -> tuple[str, ...]:
    """The class-specific words of class `label` (for `code`: identifiers, keywords and operators)."""
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(LABEL_NAMES):
        raise SaeAmortError(f"label must be an integer in [0, {len(LABEL_NAMES)}), got {label!r}")
    return tuple(w for w, (_, c) in _word_kinds().items() if c == label)


def vocabulary() -> list[str]:
    """Every word the generator can emit, each once, in a fixed order (function words first, then shared, topic)."""
    return list(_word_kinds())


def word_annotations() -> dict[str, dict]:
    """Per vocabulary word: `topic_class` (int, -1 unless class-specific), `is_topic_word`, `is_function_word`,
    `first_letter` ("a".."z", or "" for numbers and symbols) and `kind` (function, punctuation, number, time,
    generic_noun/verb/adj/entity, noun, verb, adj, entity, code)."""
    return {
        word: {
            "topic_class": topic_class,
            "is_topic_word": topic_class >= 0,
            "is_function_word": kind == "function",
            "first_letter": word[0] if "a" <= word[0] <= "z" else "",
            "kind": kind,
        }
        for word, (kind, topic_class) in _word_kinds().items()
    }
