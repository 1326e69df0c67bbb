"""An interrupted collection resumes from its last complete shard and ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from helpers import tiny_model, tiny_tokenizer
from saelens_amort.activations import ActivationStore, CollectConfig, collect_activations, resolve_source
from saelens_amort.activations import collect as collect_module
from saelens_amort.activations import shards as shards_module
from saelens_amort.errors import SaeAmortError

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tiny_tokenizer(tmp_path_factory.mktemp("tok")))


class Interrupted(Exception):
    pass


# shard_tokens is not a multiple of a batch's rows, so the resume point falls inside a batch.
CFG = CollectConfig(HOOK, n_tokens=1000, context_size=20, batch_size=3, shard_tokens=170)


def test_resume_after_interruption_is_identical(model, tmp_path, monkeypatch):
    source = resolve_source("toy", seed=7)
    real_write = shards_module.write_shard
    calls = {"write": 0, "forward": 0}

    def failing_write(directory, index, batch):
        calls["write"] += 1
        if calls["write"] == 3:
            raise Interrupted
        return real_write(directory, index, batch)

    monkeypatch.setattr(shards_module, "write_shard", failing_write)
    with pytest.raises(Interrupted):
        collect_activations(model, source, CFG, tmp_path / "s", model_name="tiny", progress=False)
    monkeypatch.undo()

    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert [s["n_rows"] for s in manifest["shards"]] == [170, 170] and manifest["resume"]["skip_rows"] > 0
    with pytest.raises(SaeAmortError, match="incomplete.*resume"):
        ActivationStore.open(tmp_path / "s")
    (tmp_path / "s" / ".shard_00002.safetensors.tmp-99999").write_bytes(b"half a shard")  # a kill mid-write
    (tmp_path / "s" / "shard_00002.safetensors").write_bytes(b"renamed, not yet listed")

    real_forward = collect_module._forward_rows

    def counting_forward(model, chunks, *args, **kwargs):
        calls["forward"] += 1
        calls.setdefault("first_doc", chunks[0].doc)
        return real_forward(model, chunks, *args, **kwargs)

    monkeypatch.setattr(collect_module, "_forward_rows", counting_forward)
    resumed = collect_activations(model, source, CFG, tmp_path / "s", model_name="tiny", progress=False)
    monkeypatch.undo()
    fresh = collect_activations(model, source, CFG, tmp_path / "fresh", model_name="tiny", progress=False)

    assert calls["first_doc"] == manifest["resume"]["doc"] > 0  # covered documents were not rerun
    assert not any(p.name.startswith(".") for p in (tmp_path / "s").iterdir())
    got, want = resumed.load(dtype=torch.float32), fresh.load(dtype=torch.float32)
    assert resumed.n_tokens == fresh.n_tokens == 1000
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert [s["n_rows"] for s in json.loads((tmp_path / "s" / "manifest.json").read_text())["shards"]] == [
        170, 170, 170, 170, 170, 150]


def test_resume_refuses_a_corrupt_shard(model, tmp_path, monkeypatch):
    source = resolve_source("toy", seed=7)
    real_write = shards_module.write_shard

    def failing_write(directory, index, batch):
        if index == 2:
            raise Interrupted
        return real_write(directory, index, batch)

    monkeypatch.setattr(shards_module, "write_shard", failing_write)
    with pytest.raises(Interrupted):
        collect_activations(model, source, CFG, tmp_path / "s", model_name="tiny", progress=False)
    monkeypatch.undo()
    shard = tmp_path / "s" / "shard_00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-4:] = bytes(255 - b for b in data[-4:])
    shard.write_bytes(bytes(data))
    with pytest.raises(SaeAmortError, match="shard_00000.safetensors .*sha256; delete"):
        collect_activations(model, source, CFG, tmp_path / "s", model_name="tiny", progress=False)


@pytest.mark.parametrize("finite", [False, True])
def test_resume_when_only_completion_was_missing(model, tmp_path, finite):
    if finite:  # a source that runs out before n_tokens: the store is complete with what there was
        (tmp_path / "docs.txt").write_text("the match was played\nthe team won the final\n" * 5)
        source = resolve_source(str(tmp_path / "docs.txt"))
    else:
        source = resolve_source("toy:code")
    cfg = CollectConfig(HOOK, n_tokens=120, context_size=20, batch_size=2, shard_tokens=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store = collect_activations(model, source, cfg, tmp_path / "s", model_name="tiny", progress=False)
        meta = json.loads((tmp_path / "s" / "meta.json").read_text())
        meta["complete"] = False
        (tmp_path / "s" / "meta.json").write_text(json.dumps(meta))
        again = collect_activations(model, source, cfg, tmp_path / "s", model_name="tiny", progress=False)
    assert again.n_tokens == store.n_tokens == (45 if finite else 120) and again.d_in == store.d_in
    assert torch.equal(again.load().acts, store.load().acts)
