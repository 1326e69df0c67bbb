"""What produced an output: library versions, git commit, platform. Recorded in every result file."""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

_PACKAGES = ("saelens_amort", "torch", "transformer-lens", "sae-lens", "transformers", "numpy")


@lru_cache(maxsize=1)
def git_hash() -> str | None:
    """The commit of the saelens_amort checkout in use (None for an installed wheel)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def provenance() -> dict:
    return {"versions": versions(), "git": git_hash(), "python": platform.python_version()}
