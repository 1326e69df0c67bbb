"""collect_activations: alignment with single-sequence runs, exact sizes, caching, refusals, hook and size errors."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from helpers import tiny_model, tiny_tokenizer
from saelens_amort.activations import CollectConfig, collect_activations, hook_layer, resolve_source
from saelens_amort.activations import collect as collect_module
from saelens_amort.errors import SaeAmortError
from saelens_amort.toy.corpus import generate_corpus

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer)


@pytest.fixture(scope="module")
def docs_file(tmp_path_factory) -> Path:
    """Labelled documents of mixed lengths: short ones, an empty one, and long ones split into several chunks."""
    docs = generate_corpus(12, seed=3)
    records = [{"text": d.text, "label": d.label} for d in docs]
    records.insert(2, {"text": "", "label": 4})
    records.insert(4, {"text": "the", "label": 2})
    records.append({"text": " ".join(d.text for d in docs[:3]), "label": 0})
    path = tmp_path_factory.mktemp("src") / "docs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def expected_rows(model, path: Path, context_size: int, hook: str = HOOK):
    """Every (token, doc, position, label, activation) by running each chunk alone with run_with_cache."""
    rows = []
    bos = model.tokenizer.bos_token_id
    for doc, line in enumerate(path.read_text().splitlines()):
        record = json.loads(line)
        ids = model.tokenizer(record["text"], add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), context_size - 1):
            seq = torch.tensor([[bos] + ids[start: start + context_size - 1]])
            with torch.no_grad():
                _, cache = model.run_with_cache(seq, names_filter=hook)
            for pos in range(1, seq.shape[1]):
                rows.append((int(seq[0, pos]), doc, pos, record["label"], cache[hook][0, pos].reshape(-1)))
    return rows


def test_rows_match_single_sequence_runs(model, docs_file, tmp_path):
    cfg = CollectConfig(HOOK, n_tokens=10_000, context_size=24, batch_size=3, shard_tokens=50)
    with pytest.warns(UserWarning, match="ran out"):
        store = collect_activations(model, resolve_source(str(docs_file)), cfg, tmp_path / "s", model_name="tiny",
                                    progress=False)
    want = expected_rows(model, docs_file, 24)
    got = store.load()
    assert store.n_tokens == len(want) == got.n_rows and store.d_in == 32
    assert got.positions.min() == 1  # no BOS row
    assert (got.token_ids != model.tokenizer.pad_token_id).all() and (got.token_ids != 0).all()
    assert got.token_ids.tolist() == [r[0] for r in want]
    assert got.doc_ids.tolist() == [r[1] for r in want]
    assert got.positions.tolist() == [r[2] for r in want]
    assert got.labels.tolist() == [r[3] for r in want]
    assert 2 not in got.doc_ids.tolist()  # the empty document has no rows but keeps its index
    assert got.positions.max() == 23  # long documents were split into full chunks
    torch.testing.assert_close(got.acts, torch.stack([r[4] for r in want]), atol=1e-5, rtol=1e-5)
    assert all(s.dtype == torch.int64 for s in got[1:])


def test_padded_batch_equals_sequence_alone(model):
    chunks = [collect_module._Chunk(0, 0, -1, [0, 5, 6, 7, 8, 9]), collect_module._Chunk(1, 0, -1, [0, 10, 11])]
    rows = collect_module._forward_rows(model, chunks, HOOK, 1, pad=1, dtype=torch.float32)
    assert rows.n_rows == 5 + 2
    with torch.no_grad():
        _, alone = model.run_with_cache(torch.tensor([[0, 10, 11]]), names_filter=HOOK)
    torch.testing.assert_close(rows.acts[5:], alone[HOOK][0, 1:], atol=1e-6, rtol=1e-5)


def test_exact_n_tokens_and_non_block_hooks(model, tmp_path):
    source = resolve_source("toy", seed=1)
    for hook, d_in in [("blocks.0.attn.hook_z", 32), ("ln_final.hook_normalized", 32), (HOOK, 32)]:
        cfg = CollectConfig(hook, n_tokens=777, context_size=32, batch_size=4, shard_tokens=200, dtype="bfloat16")
        store = collect_activations(model, source, cfg, tmp_path / hook, model_name="tiny", progress=False)
        assert store.n_tokens == 777 and store.d_in == d_in and store.dtype == torch.bfloat16
        assert [s.n_rows for s in store.iter_shards()] == [200, 200, 200, 177]
    assert hook_layer("blocks.8.hook_resid_post") == 8 and hook_layer("ln_final.hook_normalized") is None


def test_cache_hit_does_not_run_the_model(model, tmp_path, monkeypatch):
    monkeypatch.setenv("SAEAMORT_CACHE", str(tmp_path / "cache"))
    source = resolve_source("toy:news")
    cfg = CollectConfig(HOOK, n_tokens=100, context_size=16, batch_size=2, shard_tokens=64)
    first = collect_activations(model, source, cfg, model_name="tiny", progress=False)
    assert first.path.parent == tmp_path / "cache" / "activations"

    def refuse(act, hook):
        raise AssertionError("the model ran on a cache hit")

    model.add_hook("hook_embed", refuse)
    try:
        again = collect_activations(model, resolve_source("toy:news"), cfg, model_name="tiny", progress=False)
    finally:
        model.reset_hooks()
    assert again.path == first.path and torch.equal(again.load().acts, first.load().acts)
    other = collect_activations(model, source, CollectConfig(HOOK, n_tokens=101, context_size=16), model_name="tiny",
                                progress=False)
    assert other.path != first.path  # another request, another cache key


def test_different_request_in_same_dir_is_refused(model, tmp_path):
    source = resolve_source("toy")
    collect_activations(model, source, CollectConfig(HOOK, 50, context_size=16), tmp_path / "s", model_name="tiny",
                        progress=False)
    with pytest.raises(SaeAmortError, match=r"different request.*n_tokens.*another --out or delete"):
        collect_activations(model, source, CollectConfig(HOOK, 60, context_size=16), tmp_path / "s",
                            model_name="tiny", progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SaeAmortError, match="not an activation store"):
        collect_activations(model, source, CollectConfig(HOOK, 50, context_size=16), tmp_path / "other",
                            model_name="tiny", progress=False)


@pytest.mark.parametrize("n_tokens", [0, -5])
def test_non_positive_sizes_are_refused(n_tokens):
    with pytest.raises(SaeAmortError, match="n_tokens must be positive"):
        CollectConfig(HOOK, n_tokens)
    with pytest.raises(SaeAmortError, match="batch_size must be positive"):
        CollectConfig(HOOK, 10, batch_size=n_tokens)
    with pytest.raises(SaeAmortError, match="unknown storage dtype"):
        CollectConfig(HOOK, 10, dtype="int8")


def test_bad_hook_and_layer_out_of_range(model, tmp_path):
    source = resolve_source("toy")
    with pytest.raises(SaeAmortError, match=r"no hook 'blocks.1.hook_resid_pots'.*blocks.1.hook_resid_post"):
        collect_activations(model, source, CollectConfig("blocks.1.hook_resid_pots", 10), tmp_path / "a",
                            model_name="tiny")
    with pytest.raises(SaeAmortError, match=r"layers 0\.\.1"):
        collect_activations(model, source, CollectConfig("blocks.5.hook_resid_post", 10), tmp_path / "b",
                            model_name="tiny")
    with pytest.raises(SaeAmortError, match="exceeds the model's context"):
        collect_activations(model, source, CollectConfig(HOOK, 10, context_size=65), tmp_path / "c",
                            model_name="tiny")
    assert not (tmp_path / "a").exists()


def test_unwritable_out_dir(model, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SaeAmortError, match="cannot create store directory.*choose another --out"):
        collect_activations(model, resolve_source("toy"), CollectConfig(HOOK, 10, context_size=16), blocker / "store",
                            model_name="tiny", progress=False)


def test_empty_source_is_an_error(model, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n\n")
    with pytest.raises(SaeAmortError, match="has no text"):
        collect_activations(model, resolve_source(str(empty)), CollectConfig(HOOK, 10, context_size=16), tmp_path / "s",
                            model_name="tiny", progress=False)
    assert not (tmp_path / "s").exists()


def test_store_files_respect_the_umask(model, tmp_path):
    old = os.umask(0o027)
    try:
        collect_activations(model, resolve_source("toy"), CollectConfig(HOOK, 40, context_size=16, shard_tokens=16),
                            tmp_path / "s", model_name="tiny", progress=False)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "s").iterdir()}
    assert len(modes) == 5 and set(modes.values()) == {0o640}, modes  # 3 shards, manifest, meta
