"""Integer labels from every kind of source (.jsonl, .parquet, a Hugging Face dataset whose label column is a plain
integer) reach the store's label names and the real/* metrics of eval."""

from __future__ import annotations

import json
import math

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from saelens_amort.activations import ActivationStore
from saelens_amort.runners.eval import EvalConfig, run_eval
from saelens_amort.toy.corpus import generate_corpus

DOCS = generate_corpus(160, seed=4)
ROWS = [{"text": d.text, "label": int(d.label) % 2} for d in DOCS]  # two classes, no names anywhere


def write_source(kind: str, folder) -> str:
    if kind == "jsonl":
        (folder / "docs.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
        return str(folder / "docs.jsonl")
    if kind == "parquet":
        pq.write_table(pa.table({"text": [r["text"] for r in ROWS], "label": [r["label"] for r in ROWS]}),
                       folder / "docs.parquet")
        return str(folder / "docs.parquet")
    data = datasets.Dataset.from_list(ROWS)  # in memory; label is Value("int64"), not a ClassLabel
    assert type(data.features["label"]).__name__ == "Value"
    (folder / "hf").mkdir()
    data.to_parquet(str(folder / "hf" / "train.parquet"))
    return f"hf:{folder / 'hf'}"  # the hf: path (datasets.load_dataset), as for a hub dataset


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "hf"])
def test_real_labels_reach_the_metrics(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("SAEAMORT_CACHE", str(tmp_path / "cache"))
    cfg = EvalConfig(model="toy", layer=2, saes=("toy/topk",), modes=("amortized",), metrics=("probes",),
                     tokens=1024, calib_tokens=256, batch_size=1024, splice_sequences=0,
                     source=write_source(kind, tmp_path))
    out = tmp_path / "run"
    row = run_eval(cfg, out, progress=False).iloc[0]
    store = ActivationStore.open(json.loads((out / "results.json").read_text())["activation_store"])
    assert store.label_names == ("class0", "class1")
    assert "no labels" not in row["skipped"]
    assert all(math.isfinite(row[f"real/{c}/f1@1"]) for c in ("class0", "class1"))
