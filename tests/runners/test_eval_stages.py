"""Stage timings of an eval (results.json "timings", bench_eval's input) and the per-SAE bar naming the stage."""

import json
import os
import pty
import subprocess
import sys
import time

import pytest

from saelens_amort.runners.eval import EvalConfig, run_eval
from saelens_amort.runners.eval_stages import Stages


def test_stages_accumulate_nested_and_per_sae(capsys):
    stages = Stages(progress=True)  # stderr is not a terminal under pytest: no bar, nothing printed
    with stages.sae("a", total=2):
        for _ in range(2):
            with stages.stage("solve"):
                with stages.stage("inner"):
                    time.sleep(0.02)
            stages.advance()
    with stages.sae("b", total=1):
        with stages.stage("solve"):
            time.sleep(0.01)
    with stages.stage("report"):
        pass
    out = stages.as_json()
    assert out["stages"]["solve"] >= out["stages"]["inner"] >= 0.04
    assert out["per_sae"]["a"]["solve"] >= 0.04 and 0.01 <= out["per_sae"]["b"]["solve"] < out["per_sae"]["a"]["solve"]
    assert out["per_sae"]["a"]["total"] >= out["per_sae"]["a"]["solve"]
    assert "report" not in out["per_sae"]["a"] and out["stages"]["report"] >= 0
    assert capsys.readouterr().err == ""


def test_results_json_carries_stage_timings(tmp_path):
    cfg = EvalConfig(model="toy", layer=2, saes=("toy/topk",), modes=("amortized", "semi"), tokens=512,
                     calib_tokens=256, batch_size=256, splice_sequences=2)
    run_eval(cfg, tmp_path / "run", progress=False)
    timings = json.loads((tmp_path / "run" / "results.json").read_text())["timings"]
    for name in ("load model", "collect", "calibrate λ", "solve amortized", "solve semi", "metric reconstruction",
                 "splice", "report"):
        assert name in timings["stages"], name
    assert set(timings["per_sae"]) == {"toy/topk"}
    assert timings["wall_seconds"] >= sum(timings["per_sae"]["toy/topk"][k] for k in ("calibrate λ", "solve semi"))


@pytest.mark.slow
def test_bar_names_the_stage_on_a_terminal_only(tmp_path):
    args = [sys.executable, "-m", "saelens_amort", "eval", "--sae", "toy/topk", "--modes", "amortized,semi",
            "--tokens", "512", "--calib-tokens", "256", "--batch-size", "128", "--splice-sequences", "2"]
    env = {**os.environ, "SAEAMORT_CACHE": str(tmp_path / "cache"), "COLUMNS": "200"}
    piped = subprocess.run([*args, "--out", str(tmp_path / "piped")], env=env, capture_output=True, text=True)
    assert piped.returncode == 0, piped.stderr
    assert "toy/topk: solve semi" not in piped.stderr and "batches" not in piped.stderr
    leader, follower = pty.openpty()
    proc = subprocess.Popen([*args, "--out", str(tmp_path / "tty")], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait() == 0
    text = seen.decode(errors="replace")
    assert "toy/topk: solve semi" in text or "toy/topk: calibrate λ" in text
    assert "batches" in text
