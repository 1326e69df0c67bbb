"""Feature lists for the α-sweep: the `Feature` (layer, latent, label) and `read_features`, which reads them from
the files users bring without torch or pandas, so a bad file answers at once:

- CSV `layer,feature[,label]`;
- a Neuronpedia list export as it comes, JSON (a list of objects) or CSV: Neuronpedia SAE ids as layers
  (`8-res-jb`, `gpt2-small/8-res-jb` → layer 8), the latent in `index`, the label in `description` or `explanation`;
- a `select-latents` JSON (`hook`, `latents`, `class_name`).

A CSV file is UTF-8 (a byte-order mark is skipped) with a header row; every value is read as text, blank lines are
skipped, a row shorter than the header has empty values for the rest, and a longer one is refused. Errors name the
file's line.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saelens_amort.errors import SaeAmortError
from saelens_amort.layers import neuronpedia_layer

LATENT_KEYS = ("feature", "index")
LABEL_KEYS = ("label", "description", "explanation")


@dataclass(frozen=True)
class Feature:
    """One latent to sweep: its layer, its index in that layer's SAE, and a label for the reports."""

    layer: int
    latent: int
    label: str = ""


def read_features(path: Path) -> list[Feature]:
    """Features from any of the files of the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise SaeAmortError(f"feature file {path} does not exist")
    if path.suffix == ".json":
        return _json_features(path)
    header, rows = _read_csv(path)
    missing = [c for c in ("layer", "feature | index") if not set(c.split(" | ")) & set(header)]
    if missing:
        raise SaeAmortError(f"{path} lacks column(s) {', '.join(missing)}; expected layer,feature[,label] or a "
                            f"Neuronpedia export's layer,index (found {', '.join(header)})")
    return [_feature(row, f"{path} row {line}") for line, row in rows]


def _json_features(path: Path) -> list[Feature]:
    try:
        rec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SaeAmortError(f"{path} is not valid JSON ({e})") from None
    if isinstance(rec, list):
        return [_feature(r, f"{path} entry {i}") for i, r in enumerate(rec)]
    try:
        layer = int(rec["hook"].split(".")[1])
        return [Feature(layer, int(j), f"{rec.get('class_name') or ''}") for j in rec["latents"]]
    except (KeyError, ValueError, IndexError, TypeError, AttributeError) as e:
        raise SaeAmortError(f"{path} is neither a Neuronpedia list export (a JSON list) nor a select-latents "
                            f"JSON ({type(e).__name__}: {e})") from None


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """A CSV file's header and its rows as (line number, column → text) pairs (module docstring)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            lines = [(reader.line_num, row) for row in reader if row and (len(row) > 1 or row[0].strip())]
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise SaeAmortError(f"cannot read {path} as CSV ({e})") from None
    if not lines:
        raise SaeAmortError(f"cannot read {path} as CSV (it is empty: no header row)")
    (_, header), body = lines[0], lines[1:]
    rows = []
    for line, values in body:
        if len(values) > len(header):
            raise SaeAmortError(f"cannot read {path} as CSV (line {line} has {len(values)} values but the header "
                                f"{len(header)} columns)")
        values += [""] * (len(header) - len(values))
        rows.append((line, dict(zip(reversed(header), reversed(values)))))  # a repeated column: the first one's
    return header, rows


def _feature(rec: Any, where: str) -> Feature:
    if not isinstance(rec, dict):
        raise SaeAmortError(f"{where} is not an object with layer and index")
    latent_key = next((k for k in LATENT_KEYS if k in rec), None)
    if "layer" not in rec or latent_key is None:
        raise SaeAmortError(f"{where} lacks 'layer' or 'index'/'feature' (has {sorted(rec)})")
    layer = _int(rec["layer"])
    if layer is None and isinstance(rec["layer"], str):
        layer = neuronpedia_layer(rec["layer"])
    latent = _int(rec[latent_key])
    if layer is None or latent is None:
        raise SaeAmortError(f"{where}: layer must be an integer or a Neuronpedia SAE id like 8-res-jb and "
                            f"{latent_key} an integer, got layer={rec['layer']!r}, {latent_key}={rec[latent_key]!r}")
    label = next((str(rec[k]) for k in LABEL_KEYS if isinstance(rec.get(k), (str, int, float)) and rec[k] != ""), "")
    return Feature(layer, latent, label)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None
