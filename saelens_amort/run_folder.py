"""A run's output folder remembers the config that wrote it (`run.json`), so that no run silently replaces or deletes
another's results: the same command and config may rerun (resuming what it can), anything else is refused unless the
user passes --overwrite.

Runners call `check_run_folder` before any work (it writes nothing) and `record_run` just before they first write
into the folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from saelens_amort.atomic import write_text_atomic
from saelens_amort.errors import SaeAmortError

RECORD_FILE = "run.json"


def run_record(command: str, config: dict[str, Any]) -> dict[str, Any]:
    """What a folder records: the command and its resolved config, as plain JSON."""
    return json.loads(json.dumps({"command": command, "config": config}, default=str))


def recorded_run(out: Path) -> dict[str, Any] | None:
    """The record in `out`, or None when there is none (or it is unreadable)."""
    try:
        record = json.loads((Path(out) / RECORD_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def holds_run(out: Path, command: str, config: dict[str, Any]) -> bool:
    """True when `out` records exactly this command and config."""
    return recorded_run(out) == run_record(command, config)


def check_run_folder(out: Path, command: str, config: dict[str, Any], *, overwrite: bool) -> None:
    """Refuse an `out` that holds anything but this command's run of this config (unless `overwrite`).

    An absent or empty folder is free; a folder of the same run is reused; a folder with another record, or with
    files but no record, belongs to someone else.
    """
    out = Path(out)
    if overwrite or not out.exists():
        return
    if not out.is_dir():
        raise SaeAmortError(f"--out {out} is a file, not a folder; choose another --out")
    if holds_run(out, command, config):
        return
    if not any(out.iterdir()):
        return
    record = recorded_run(out)
    if record is None:
        what = "files not written by a run of this config"
    elif record.get("command") != command:
        what = f"results of `saeamort {record.get('command')}`"
    else:
        old, new = record.get("config") or {}, run_record(command, config)["config"]
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        what = f"results of a different {command} config ({', '.join(diff[:4])} differ)"
    raise SaeAmortError(f"{out} holds {what}; use another --out or pass --overwrite to replace them")


def record_run(out: Path, command: str, config: dict[str, Any]) -> None:
    """Create `out` if needed and record this run in it."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SaeAmortError(f"cannot create --out {out} ({e.strerror or e})") from None
    if not holds_run(out, command, config):
        write_text_atomic(out / RECORD_FILE, json.dumps(run_record(command, config), indent=2))


def check_run_file(out: Path, command: str, config: dict[str, Any], *, overwrite: bool) -> None:
    """The same rule for a one-file output (a JSON whose `run` key holds the record): refuse to replace another run's
    file unless `overwrite`."""
    out = Path(out)
    if overwrite or not out.exists():
        return
    try:
        record = json.loads(out.read_text()).get("run")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        record = None
    if record != run_record(command, config):
        raise SaeAmortError(f"{out} holds another result (not this {command} run); use another --out or pass "
                            "--overwrite to replace it")
