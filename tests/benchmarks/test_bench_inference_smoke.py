"""Smoke test of benchmarks/bench_inference.py: tiny sizes, every line parses, every mode and peer reports.
No timing assertions: the figures belong to the full run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_inference.py"


@pytest.mark.slow
def test_quick_run_reports_every_mode_and_peer():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_inference as bench
    finally:
        sys.path.remove(str(SCRIPT.parent))
    args = ["--quick", "--d-sae", "96", "--n", "24", "--d-in", "32", "--k", "3", "--threads", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, env=env, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    records = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "run" and kinds[-1] == "summary" and "setup" in kinds and "flops" in kinds

    modes = {r["method"] for r in records if r["kind"] == "mode"}
    expected = {mode + ("" if not opts else "_" + "_".join(opts.values())) for mode, opts in bench.MODES}
    assert modes == expected
    peers = {r["method"]: r for r in records if r["kind"] == "peer"}
    assert set(peers) == set(bench.ALL_PEERS)
    for r in records:
        if r["kind"] in ("mode", "peer") and "skipped" not in r:
            assert {"seconds", "objective", "l0", "nmse"} <= set(r)
    # The lasso peers and our unamortized mode solve the same problem at the same λ.
    ours = next(r for r in records if r["kind"] == "mode" and r["method"] == "unamortized")
    for name in ("sklearn_lasso_cd", "sklearn_lasso_lars"):
        assert peers[name]["objective"] == pytest.approx(ours["objective"], rel=1e-3)
    summary = records[-1]
    assert {"a_speedup", "b_encoder_equivalents_unamortized", "b_encoder_equivalents_semi", "c_flop_fraction"} <= set(
        summary
    )
    assert set(summary["met"]) == {"a", "b_unamortized", "b_semi", "c"}
