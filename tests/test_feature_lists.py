"""Feature lists as users bring them: the layer,feature CSV, Neuronpedia list exports (JSON and CSV, layer ids like
8-res-jb, an index column) and select-latents JSON; malformed entries are one user error naming the entry."""

import json

import pytest

from saelens_amort import SaeAmortError
from saelens_amort.feature_lists import Feature, read_features

# the shape of a Neuronpedia list export: string indices, Neuronpedia SAE ids as layers, extra columns
NEURONPEDIA = [
    {"modelId": "gpt2-small", "layer": "8-res-jb", "index": "14710", "description": "the word 'the'"},
    {"modelId": "gpt2-small", "layer": "gpt2-small/0-res-jb", "index": 3, "explanation": "", "addedAt": "2024"},
]


def test_neuronpedia_json_and_csv_exports(tmp_path):
    (tmp_path / "np.json").write_text(json.dumps(NEURONPEDIA))
    expected = [Feature(8, 14710, "the word 'the'"), Feature(0, 3, "")]
    assert read_features(tmp_path / "np.json") == expected
    (tmp_path / "np.csv").write_text("modelId,layer,index,description\ngpt2-small,8-res-jb,14710,the word 'the'\n"
                                     "gpt2-small,gpt2-small/0-res-jb,3,\n")
    assert read_features(tmp_path / "np.csv") == expected


def test_plain_csv_and_select_latents(tmp_path):
    (tmp_path / "f.csv").write_text("layer,feature,label\n2,5,a\n1,7,\n")
    assert read_features(tmp_path / "f.csv") == [Feature(2, 5, "a"), Feature(1, 7, "")]
    (tmp_path / "s.json").write_text(json.dumps({"hook": "blocks.2.hook_resid_post", "latents": [4, 9],
                                                 "class_name": "x"}))
    assert read_features(tmp_path / "s.json") == [Feature(2, 4, "x"), Feature(2, 9, "x")]


@pytest.mark.parametrize("entry, pattern", [
    ({"layer": "res-jb", "index": "3"}, r"entry 0: layer must be an integer or a Neuronpedia SAE id"),
    ({"layer": "8-res-jb", "index": "3.5"}, r"entry 0: .*index an integer"),
    ({"layer": "8-res-jb"}, r"entry 0 lacks 'layer' or 'index'"),
    ("8-res-jb", r"entry 0 is not an object"),
])
def test_bad_neuronpedia_entries(entry, pattern, tmp_path):
    (tmp_path / "np.json").write_text(json.dumps([entry]))
    with pytest.raises(SaeAmortError, match=pattern):
        read_features(tmp_path / "np.json")


def test_csv_as_spreadsheets_write_it(tmp_path):
    """A byte-order mark, blank lines, quoted commas and short rows read as they would in a spreadsheet; errors name
    the file's line."""
    (tmp_path / "f.csv").write_bytes("\ufefflayer,feature,label\r\n\r\n2,5,\"a, b\"\r\n1,7\r\n  \r\n".encode())
    assert read_features(tmp_path / "f.csv") == [Feature(2, 5, "a, b"), Feature(1, 7, "")]
    (tmp_path / "dup.csv").write_text("layer,feature,layer\n2,5,9\n")  # a repeated column: the first one counts
    assert read_features(tmp_path / "dup.csv") == [Feature(2, 5, "")]
    (tmp_path / "bad.csv").write_text("layer,feature\n\n2,x\n")
    with pytest.raises(SaeAmortError, match=r"bad.csv row 3: layer must be .* got layer='2', feature='x'"):
        read_features(tmp_path / "bad.csv")


@pytest.mark.parametrize("content, pattern", [
    (b"", r"cannot read .*e.csv as CSV \(it is empty: no header row\)"),
    (b"\n\n", r"cannot read .*e.csv as CSV \(it is empty"),
    (b"layer,feature\n2,3,4\n", r"cannot read .*e.csv as CSV \(line 2 has 3 values but the header 2 columns\)"),
    (b"layer,feature\n\xff,2\n", r"cannot read .*e.csv as CSV \('utf-8' codec can't decode"),
    (b"layer,index_\n2,3\n", r"e.csv lacks column\(s\) feature \| index; .*\(found layer, index_\)"),
])
def test_unreadable_csv_is_one_error(content, pattern, tmp_path):
    (tmp_path / "e.csv").write_bytes(content)
    with pytest.raises(SaeAmortError, match=pattern):
        read_features(tmp_path / "e.csv")
