"""Runner for `saeamort dynamics`: the price of amortization over an SAE's training.

A folder of checkpoints is indexed into `checkpoint_index.parquet` (path, step, where the step came from, format),
then every checkpoint is evaluated like `eval` (one λ per checkpoint, all modes, same activations) and the metrics are
plotted against the step. Checkpoints are any loadable SAE format, found at any depth:

- SAE-Lens directories (`cfg.json` + `sae_weights.safetensors`; SAETrainer names them by training samples, e.g.
  `4096/`, `final_8192/`): step = `n_training_steps` from the `trainer_state.pt` beside them, else the name;
- dictionary_learning runs (`ae.pt` + `config.json`): step = the trainer's `steps`, and their intermediate
  `checkpoints/ae_<step>.pt` files: step from the name.

A step from a name is the last integer in it (`step_500`, `checkpoint-2000`, `ae_1000.pt`, `final_8192`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pandas as pd
import torch

from saelens_amort.devices import on_device
from saelens_amort.errors import SaeAmortError
from saelens_amort.atomic import write_atomic
from saelens_amort.runners.eval import EvalConfig, check_out_dir, evaluate, write_outputs
from saelens_amort.runners.records import json_records

logger = logging.getLogger(__name__)

INDEX_FILENAME = "checkpoint_index.parquet"
STEP_METRICS = ("nmse", "l0", "dead_rate", "gap_mean", "real/f1@1", "real/absorption_rate", "ce_recovered", "kl")
_LAST_INT = re.compile(r"(\d+)(?!.*\d)")


def step_from_name(name: str) -> int | None:
    m = _LAST_INT.search(name)
    return int(m.group(1)) if m else None


def _sae_lens_step(path: Path) -> tuple[int | None, str]:
    state = path / "trainer_state.pt"
    if state.is_file():
        try:
            steps = torch.load(state, map_location="cpu", weights_only=True).get("n_training_steps")
            if steps is not None:
                # SAE-Lens saves a run's checkpoints inside a step, after its update and before counting it; only the
                # final_* checkpoint is saved after the loop
                return int(steps) + (0 if path.name.startswith("final") else 1), "metadata"
        except Exception as e:  # noqa: BLE001 - an unreadable trainer state only loses the metadata step
            logger.warning("cannot read %s (%s); taking the step from the name", state, e)
    return step_from_name(path.name), "name"


def _dictionary_learning_step(path: Path) -> tuple[int | None, str]:
    try:
        steps = json.loads((path / "config.json").read_text())["trainer"].get("steps")
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        steps = None
    if isinstance(steps, int):
        return steps, "metadata"
    return step_from_name(path.name), "name"


def index_checkpoints(root: Path) -> pd.DataFrame:
    """One row per checkpoint under `root`, sorted by step (module docstring)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SaeAmortError(f"--checkpoints {root} is not a directory")
    rows = []
    for cfg in sorted([*root.rglob("cfg.json"), *root.rglob("config.json")]):
        d = cfg.parent
        if cfg.name == "cfg.json" and (d / "sae_weights.safetensors").is_file():
            step, how = _sae_lens_step(d)
            rows.append({"path": str(d), "format": "sae_lens", "step": step, "step_source": how})
        elif cfg.name == "config.json" and (d / "ae.pt").is_file():
            step, how = _dictionary_learning_step(d)
            rows.append({"path": str(d), "format": "dictionary_learning", "step": step, "step_source": how})
        if cfg.name == "config.json":
            for f in sorted((d / "checkpoints").glob("ae_*.pt")):
                rows.append({"path": str(f), "format": "dictionary_learning", "step": step_from_name(f.stem),
                             "step_source": "name"})
    if not rows:
        raise SaeAmortError(f"no SAE checkpoints under {root}: expected SAE-Lens folders (cfg.json + "
                            "sae_weights.safetensors) or dictionary_learning runs (ae.pt + config.json, checkpoints/)")
    df = pd.DataFrame(rows)
    unknown = df[df["step"].isna()]
    if len(unknown):
        raise SaeAmortError(f"cannot tell the training step of {len(unknown)} checkpoint(s), e.g. "
                            f"{unknown['path'].iloc[0]}; put the step in the folder or file name (e.g. step_1000)")
    return df.astype({"step": "int64"}).sort_values(["step", "path"], ignore_index=True)


def run_dynamics(cfg: EvalConfig, checkpoints: Path, out: Path, *, overwrite: bool = False,
                 progress: bool = True) -> pd.DataFrame:
    """Index `checkpoints`, evaluate each in `cfg`'s modes, and write the eval outputs plus the index to `out`."""
    from saelens_amort.report import Section, step_curves, table_html

    index = index_checkpoints(checkpoints)
    cfg = EvalConfig(**{**on_device(cfg).__dict__, "saes": tuple(index["path"]),
                        "extra": {**cfg.extra, "checkpoints": str(Path(checkpoints).resolve())}})
    out = Path(out)
    check_out_dir(out, cfg, overwrite)
    ev = evaluate(cfg, cfg.saes, out, progress=progress)
    ev.df.insert(1, "step", ev.df["sae"].map(dict(zip(index["path"], index["step"]))))
    write_atomic(out / INDEX_FILENAME, lambda p: index.to_parquet(p, index=False))
    sections = [
        Section("Metrics over training", step_curves(ev.df, STEP_METRICS),
                missing="no metric could be computed for these checkpoints"),
        Section(f"Checkpoints ({len(index)})", html=table_html(index)),
    ]
    write_outputs(out, ev, cfg, extra_meta={"checkpoint_index": json_records(index)},
                  extra_sections=sections)
    return ev.df
