"""The examples run end to end on the toy world (they are documentation; this keeps them true)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
@pytest.mark.parametrize("script,args,expect", [
    ("toy_quickstart.py", ["--tokens", "2000"], "NMSE"),
    ("amortization_gap.py", ["--family", "topk", "--tokens", "2048"], "most frequent latents"),
])
def test_example_runs(script, args, expect):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert expect in proc.stdout
