"""resolve_source: toy domains, .txt/.jsonl/.parquet files with labels, hf: specs offline, and clear errors."""

from __future__ import annotations

import itertools
import json
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from saelens_amort.activations import resolve_source
from saelens_amort.activations.sources import _FILE_READERS, TextSource
from saelens_amort.errors import SaeAmortError
from saelens_amort.source_spec import FILE_SUFFIXES, FileSpec, HFSpec, ToySpec, check_source
from saelens_amort.toy.corpus import LABEL_NAMES


def take(source: TextSource, n: int) -> list[tuple[str, int]]:
    return list(itertools.islice(source.iter_documents(), n))


def test_toy_sources_are_seeded_and_split_by_domain():
    toy, same, other = resolve_source("toy"), resolve_source("toy", seed=0), resolve_source("toy", seed=1)
    assert isinstance(toy, TextSource) and toy.label_names == LABEL_NAMES
    assert take(toy, 5) == take(same, 5) != take(other, 5) and toy.name == same.name != other.name
    assert {label for _, label in take(resolve_source("toy:code"), 20)} == {LABEL_NAMES.index("code")}
    assert LABEL_NAMES.index("code") not in {label for _, label in take(resolve_source("toy:news"), 50)}
    assert len({resolve_source(s).name for s in ("toy", "toy:news", "toy:code")}) == 3
    with pytest.raises(SaeAmortError, match="toy:news"):
        resolve_source("toy:poetry")


def test_txt_one_document_per_non_empty_line(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first line\n\n   \nsecond line\r\nthird\n")
    source = resolve_source(str(path))
    assert list(source.iter_documents()) == [("first line", -1), ("second line", -1), ("third", -1)]
    assert str(path) in source.name and source.label_names is None
    name = source.name
    time.sleep(0.01)
    path.write_text("first line\nedited\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns()))
    assert resolve_source(str(path)).name != name  # an edited file is not a cache hit


def test_jsonl_text_label_and_text_column(tmp_path):
    path = tmp_path / "a.jsonl"
    lines = [{"text": "hello world", "label": 1}, {"text": "no label"}, {"body": "x", "text": "", "label": 2.0}]
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n\n")
    assert list(resolve_source(str(path)).iter_documents()) == [("hello world", 1), ("no label", -1), ("", 2)]
    with pytest.raises(SaeAmortError, match="no field 'content'.*text column"):
        resolve_source(str(path), text_column="content")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "sports"}\n')
    with pytest.raises(SaeAmortError, match="not an integer"):
        list(resolve_source(str(bad)).iter_documents())


def test_parquet_in_row_group_batches(tmp_path):
    path = tmp_path / "a.parquet"
    texts = [f"doc {i}" for i in range(2500)]
    pq.write_table(pa.table({"text": texts, "label": [i % 3 for i in range(2500)]}), path, row_group_size=700)
    docs = list(resolve_source(str(path)).iter_documents())
    assert docs[:2] == [("doc 0", 0), ("doc 1", 1)] and len(docs) == 2500 and docs[-1] == ("doc 2499", 2499 % 3)
    nolabel = tmp_path / "b.parquet"
    pq.write_table(pa.table({"content": ["x y", None]}), nolabel)
    assert list(resolve_source(str(nolabel), text_column="content").iter_documents()) == [("x y", -1), ("", -1)]
    with pytest.raises(SaeAmortError, match="no column 'text'"):
        resolve_source(str(nolabel))


def test_file_errors(tmp_path):
    with pytest.raises(SaeAmortError, match="does not exist"):
        resolve_source(str(tmp_path / "missing.txt"))
    (tmp_path / "a.csv").write_text("text\nx\n")
    with pytest.raises(SaeAmortError, match="unknown extension '.csv'"):
        resolve_source(str(tmp_path / "a.csv"))
    with pytest.raises(SaeAmortError, match="unknown source 'wikitext'"):
        resolve_source("wikitext")
    (tmp_path / "fake.parquet").write_text("not parquet")
    with pytest.raises(SaeAmortError, match="cannot read .* as parquet"):
        resolve_source(str(tmp_path / "fake.parquet"))


def test_check_source_parses_without_reading(tmp_path):
    """The CLI's torch-free check: what each spec names; a folder or a missing file is refused like the resolver."""
    assert set(_FILE_READERS) == set(FILE_SUFFIXES)  # a reader for every extension the check accepts
    assert check_source(" toy ") == ToySpec(None) and check_source("toy:code") == ToySpec("code")
    assert check_source("hf:a/b:c@test") == HFSpec("a/b", "c", "test")
    assert check_source("hf:a") == HFSpec("a", None, "train")
    (tmp_path / "d.parquet").write_text("not parquet")  # contents are the resolver's business
    assert check_source(str(tmp_path / "d.parquet")) == FileSpec(tmp_path / "d.parquet")
    (tmp_path / "dir.txt").mkdir()
    for spec, message in [(str(tmp_path / "dir.txt"), "is not a file"), ("hf:@x", "needs a dataset name"),
                          ("toy:poetry", "unknown toy domain 'poetry'"), ("x.csv", "unknown source 'x.csv'")]:
        with pytest.raises(SaeAmortError, match=message):
            check_source(spec)
        with pytest.raises(SaeAmortError, match=message):
            resolve_source(spec)


def test_hf_offline_and_not_cached_names_alternatives():
    with pytest.raises(SaeAmortError, match=r"hf:nosuch/dataset-xyz:cfg@test .*local .*toy"):
        resolve_source("hf:nosuch/dataset-xyz:cfg@test")


def test_hf_local_dataset_directory(tmp_path):
    pq.write_table(pa.table({"text": ["a b", "c"], "label": [1, 0]}), tmp_path / "train.parquet")
    source = resolve_source(f"hf:{tmp_path}")
    assert list(source.iter_documents()) == [("a b", 1), ("c", 0)] and source.name.startswith("hf:")
