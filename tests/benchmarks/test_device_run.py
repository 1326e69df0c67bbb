"""benchmarks/device/run.sh, the one command for a lent GPU, run here on the CPU at small sizes (SMOKE=1): both
benchmarks finish and write their JSON lines where $OUT says; without the packed site it stops at once with a line
that says what to do."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "device" / "run.sh"


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=900, env=full, check=False)


def test_without_the_packed_site_it_says_what_to_do(tmp_path):
    root = tmp_path / "repo"
    (root / "benchmarks" / "device").mkdir(parents=True)
    script = root / "benchmarks" / "device" / "run.sh"
    script.write_text(SCRIPT.read_text())  # a checkout without .gpu-site/
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60, check=False,
                         env={**os.environ, "OUT": str(tmp_path / "out"), "SITE": ""})
    assert out.returncode == 3
    assert "run pack.sh here and carry .gpu-site" in out.stderr


@pytest.mark.slow
def test_cpu_smoke_writes_both_benchmarks(tmp_path):
    out = _run(tmp_path, DEVICE="cpu", SITE="none", SMOKE="1")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "bench_device exit 0" in out.stdout and "bench_pythia_shape exit 0" in out.stdout, out.stdout
    device = [json.loads(line) for line in (tmp_path / "out" / "device.jsonl").read_text().splitlines()]
    modes = "amortized semi unamortized semi_ksparse ksparse omp".split()
    assert [r["mode"] for r in device if r["kind"] == "mode"] == modes
    assert all(r["equal_within_rtol"] for r in device if r["kind"] == "equal")
    shape = [json.loads(line) for line in (tmp_path / "out" / "pythia_cuda.jsonl").read_text().splitlines()]
    runs = [r for r in shape if r["kind"] == "eval"]
    assert [(r["tokens"], r["width"]) for r in runs] == [(1024, 1024)]
    assert "cuda False" in (tmp_path / "out" / "gpu.txt").read_text()
