"""ActivationStore: streaming across shards, loading, and clear errors for incomplete or corrupt stores."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_model, tiny_tokenizer
from saelens_amort.activations import ActivationStore, CollectConfig, collect_activations, resolve_source
from saelens_amort.errors import SaeAmortError


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory):
    model = tiny_model(tiny_tokenizer(tmp_path_factory.mktemp("tok")))
    cfg = CollectConfig("blocks.1.hook_resid_post", n_tokens=500, context_size=16, batch_size=4, shard_tokens=128,
                        dtype="float16")
    path = tmp_path_factory.mktemp("store") / "s"
    collect_activations(model, resolve_source("toy"), cfg, path, model_name="tiny", progress=False)
    return path


def test_iter_batches_crosses_shards(store_dir):
    store = ActivationStore.open(store_dir)
    assert store.n_tokens == 500 and store.d_in == 32 and store.hook_name == "blocks.1.hook_resid_post"
    assert store.model_name == "tiny" and store.label_names[:2] == ("world", "sports")
    assert store.meta["provenance"]["versions"]["torch"] and store.meta["request"]["n_tokens"] == 500
    batches = list(store.iter_batches(100))
    assert [b.n_rows for b in batches] == [100] * 5 and batches[0].acts.dtype == torch.float32
    odd = list(store.iter_batches(77, dtype=torch.float16))
    assert sum(b.n_rows for b in odd) == 500 and odd[-1].n_rows == 500 % 77 and odd[0].acts.dtype == torch.float16
    full = store.load()
    assert torch.equal(torch.cat([b.acts for b in batches]), full.acts)
    assert torch.equal(torch.cat([b.doc_ids for b in odd]), full.doc_ids)
    assert torch.equal(store.load(130).positions, full.positions[:130])
    store.verify()
    with pytest.raises(SaeAmortError, match="holds 500"):
        store.load(501)


def _copy(store_dir, tmp_path):
    import shutil

    return shutil.copytree(store_dir, tmp_path / "copy")


def test_truncated_shard(store_dir, tmp_path):
    path = _copy(store_dir, tmp_path)
    shard = path / "shard_00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(SaeAmortError, match=r"shard_00001.safetensors has \d+ bytes.*delete the store"):
        ActivationStore.open(path)


def test_overwritten_header(store_dir, tmp_path):
    path = _copy(store_dir, tmp_path)
    shard = path / "shard_00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[10:40] = b"\xff" * 30
    shard.write_bytes(bytes(data))
    store = ActivationStore.open(path)  # same size: found when read
    with pytest.raises(SaeAmortError, match="shard_00002.safetensors does not match its recorded sha256.*delete"):
        list(store.iter_batches(64))


def test_overwritten_data_is_never_served(store_dir, tmp_path):
    path = _copy(store_dir, tmp_path)
    assert torch.equal(ActivationStore.open(path).load().acts, ActivationStore.open(store_dir).load().acts)
    shard = path / "shard_00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-8:] = bytes(255 - b for b in data[-8:])  # same size, valid header: only the sha256 can tell
    shard.write_bytes(bytes(data))
    with pytest.raises(SaeAmortError, match="shard_00000.safetensors does not match its recorded sha256"):
        ActivationStore.open(path).verify()
    with pytest.raises(SaeAmortError, match="shard_00000.safetensors does not match its recorded sha256"):
        ActivationStore.open(path).load(10)  # also after this process has read the intact file


def test_not_a_store(tmp_path):
    with pytest.raises(SaeAmortError, match="not an activation store"):
        ActivationStore.open(tmp_path)
