"""Resume persistence of `saeamort eval`: each finished SAE's results, kept as plain data until the outputs exist.

`--out/.partial/{i}.safetensors` holds SAE i's arrays (the per-latent firing frequencies of each variant and the
gap sample) and `{i}.json` its table rows and the arrays' keys; the JSON is written last, so its presence marks a
complete entry. Nothing is ever unpickled: a forged folder can at worst inject numbers, never run code. Entries are
reused only when the folder's run record (`run_folder`) is this very eval config.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from saelens_amort.atomic import write_atomic, write_text_atomic
from saelens_amort.run_folder import holds_run, record_run

PARTIAL_DIR = ".partial"
"""Per-SAE results of a run in progress (removed once the outputs are written); a rerun of the same config reuses
them, whatever the number of processes (each holds a whole SAE's merged results)."""
COMMAND = "eval"


def save_partial(out: Path, config: dict[str, Any], index: int, rows: list[dict], artifacts: dict) -> None:
    """Keep SAE `index`'s rows and artifacts ({"freqs": {(sae, variant): array}, "gap": array})."""
    part = Path(out) / PARTIAL_DIR
    if not holds_run(out, COMMAND, config):  # another config's leftovers (allowed to go by --overwrite)
        shutil.rmtree(part, ignore_errors=True)
        record_run(out, COMMAND, config)
    part.mkdir(exist_ok=True)
    keys = list(artifacts["freqs"])
    arrays = {f"freq{j}": np.ascontiguousarray(artifacts["freqs"][k]) for j, k in enumerate(keys)}
    arrays["gap"] = np.ascontiguousarray(artifacts["gap"])
    write_atomic(part / f"{index}.safetensors", lambda p: save_file(arrays, str(p)))
    entry = {"rows": rows, "freq_keys": [list(k) for k in keys]}
    write_text_atomic(part / f"{index}.json", json.dumps(entry, default=_json_scalar))


def load_partials(out: Path, config: dict[str, Any]) -> dict[int, tuple[list[dict], dict]]:
    """index → (rows, artifacts) of the SAEs an interrupted run of this same config finished; unreadable entries
    are skipped (evaluated again)."""
    part = Path(out) / PARTIAL_DIR
    if not holds_run(out, COMMAND, config) or not part.is_dir():
        return {}
    found = {}
    for entry in part.glob("*.json"):
        try:
            index = int(entry.stem)
            data = json.loads(entry.read_text())
            arrays = load_file(str(part / f"{index}.safetensors"))
            freqs = {tuple(k): arrays[f"freq{j}"] for j, k in enumerate(data["freq_keys"])}
            found[index] = (list(data["rows"]), {"freqs": freqs, "gap": arrays["gap"]})
        except (ValueError, OSError, KeyError, TypeError, SafetensorError, json.JSONDecodeError):
            continue
    return found


def _json_scalar(v: Any) -> Any:
    """numpy scalars as the Python numbers they hold (exactly: a float32 widens to float64 without loss)."""
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"cannot store {type(v).__name__} in a partial result")
