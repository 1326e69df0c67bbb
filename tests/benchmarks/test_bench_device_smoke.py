"""Smoke test of benchmarks/bench_device.py on the CPU (device and reference both CPU): every mode reports its speed
and its comparison, and the comparison finds CPU results equal to themselves. No timing assertions."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_device.py"


def test_cpu_run_reports_every_mode_and_equal_results():
    args = ["--device", "cpu", "--rows", "96", "--d-in", "32", "--d-sae", "128", "--k", "4", "--compare-rows", "24",
            "--repeats", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, env=env,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    records = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    modes = "amortized semi unamortized semi_ksparse ksparse omp".split()
    assert [r["mode"] for r in records if r["kind"] == "mode"] == modes
    assert all(r["tokens_per_s"] > 0 and r["l0"] > 0 for r in records if r["kind"] == "mode")
    equal = [r for r in records if r["kind"] == "equal"]
    assert [r["mode"] for r in equal] == modes
    assert all(r["equal_within_rtol"] and r["same_support_frac"] == 1.0 for r in equal)
