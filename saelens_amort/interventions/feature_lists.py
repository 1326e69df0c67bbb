"""Feature lists for the α-sweep: (layer, latent, label) from the files users bring.

- CSV `layer,feature[,label]`;
- a Neuronpedia list export as it comes, JSON (a list of objects) or CSV: Neuronpedia SAE ids as layers
  (`8-res-jb`, `gpt2-small/8-res-jb` → layer 8), the latent in `index`, the label in `description` or `explanation`;
- a `select-latents` JSON (`hook`, `latents`, `class_name`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from saelens_amort.errors import SaeAmortError
from saelens_amort.interventions.alpha_sweep import Feature
from saelens_amort.saes.releases import neuronpedia_layer

LATENT_KEYS = ("feature", "index")
LABEL_KEYS = ("label", "description", "explanation")


def read_features(path: Path) -> list[Feature]:
    """Features from any of the files of the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise SaeAmortError(f"feature file {path} does not exist")
    if path.suffix == ".json":
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
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise SaeAmortError(f"cannot read {path} as CSV ({e})") from None
    missing = [c for c in ("layer", "feature | index") if not set(c.split(" | ")) & set(df.columns)]
    if missing:
        raise SaeAmortError(f"{path} lacks column(s) {', '.join(missing)}; expected layer,feature[,label] or a "
                            f"Neuronpedia export's layer,index (found {', '.join(map(str, df.columns))})")
    return [_feature(r, f"{path} row {i + 2}") for i, r in enumerate(df.to_dict("records"))]


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
