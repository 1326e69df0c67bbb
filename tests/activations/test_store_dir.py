"""claim_store_dir: one collection per store at a time, and a store that saved nothing never blocks its --out."""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import torch

from helpers import tiny_model, tiny_tokenizer
from saelens_amort.activations import ActivationStore, CollectConfig, collect_activations, resolve_source
from saelens_amort.activations import collect as collect_module
from saelens_amort.errors import SaeAmortError

HOOK = "blocks.0.hook_resid_post"
CFG = CollectConfig(HOOK, n_tokens=300, context_size=20, batch_size=2, shard_tokens=60)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def test_source_error_before_any_shard_does_not_block_the_out(tokenizer, tmp_path):
    model = tiny_model(tokenizer)
    path = tmp_path / "docs.jsonl"
    good = [json.dumps({"text": f"the team won match {i}", "label": i % 2}) for i in range(40)]
    path.write_text("\n".join(good[:3] + ["{not json"] + good[3:]) + "\n")
    with pytest.raises(SaeAmortError, match="docs.jsonl:4 is not valid JSON"):
        collect_activations(model, resolve_source(str(path)), CFG, tmp_path / "s", model_name="tiny",
                            progress=False)
    path.write_text("\n".join(good) + "\n")  # the user fixes the file: a different request, same --out
    store = collect_activations(model, resolve_source(str(path)), CFG, tmp_path / "s", model_name="tiny",
                                progress=False)
    assert store.n_tokens > 0 and store.meta["source"] == resolve_source(str(path)).name


@dataclass
class PausingSource:
    """The toy stream under a fixed name; pauses after `pause_after` documents until `resume` is set."""

    pause_after: int | None
    paused: threading.Event = field(default_factory=threading.Event)
    resume: threading.Event = field(default_factory=threading.Event)
    name: str = "pausing-toy"
    label_names: tuple[str, ...] | None = None

    def iter_documents(self) -> Iterator[tuple[str, int]]:
        for i, doc in enumerate(itertools.islice(resolve_source("toy", seed=5).iter_documents(), 10_000)):
            if i == self.pause_after:
                self.paused.set()
                assert self.resume.wait(60)
            yield doc


def test_identical_collections_started_together(tokenizer, tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="saelens_amort.activations.store_dir")
    forwards: dict[str, int] = {}
    real_forward = collect_module._forward_rows

    def counting_forward(*args, **kwargs):
        name = threading.current_thread().name
        forwards[name] = forwards.get(name, 0) + 1
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(collect_module, "_forward_rows", counting_forward)
    first, second = PausingSource(pause_after=3), PausingSource(pause_after=None)
    stores: dict[str, ActivationStore] = {}

    def collect(source, name):  # two model objects: each run hooks its own
        stores[name] = collect_activations(tiny_model(tokenizer), source, CFG, tmp_path / "s", model_name="tiny",
                                           progress=False)

    a = threading.Thread(target=collect, args=(first, "a"), name="a")
    a.start()
    assert first.paused.wait(60)  # a holds the store, meta and shards half written
    b = threading.Thread(target=collect, args=(second, "b"), name="b")
    b.start()
    deadline = time.time() + 60
    while "waiting for another collection" not in caplog.text and time.time() < deadline and b.is_alive():
        time.sleep(0.05)
    waited = "waiting for another collection" in caplog.text
    first.resume.set()
    a.join(60)
    b.join(60)
    assert waited and set(stores) == {"a", "b"}
    assert forwards.get("b", 0) == 0  # b found a's complete store: no model run, nothing of a's deleted
    for x, y in zip(stores["a"].load(), stores["b"].load()):
        assert torch.equal(x, y)
    stores["b"].verify()
