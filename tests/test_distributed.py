"""Distributed eval on CPU with gloo and 2 processes (torchrun): results equal the single-process run."""

import os
import subprocess
import sys

import pandas as pd
import pytest

from saelens_amort.runners.eval_protocol import DEFAULT_MODES

ARGS = ["eval", "--model", "toy", "--sae", "toy/topk", "--tokens", "3072", "--calib-tokens", "512",
        "--batch-size", "512", "--splice-sequences", "2"]


def _run(cmd, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_ranks_equal_one(tmp_path):
    _run([sys.executable, "-m", "saelens_amort", *ARGS, "--out", str(tmp_path / "one")], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
          "saelens_amort", *ARGS, "--out", str(tmp_path / "two")], tmp_path)
    one, two = pd.read_csv(tmp_path / "one" / "results.csv"), pd.read_csv(tmp_path / "two" / "results.csv")
    assert list(one.columns) == list(two.columns) and len(one) == len(two) == len(DEFAULT_MODES)
    timing = [c for c in one.columns if "second" in c]
    pd.testing.assert_frame_equal(one.drop(columns=timing), two.drop(columns=timing), rtol=1e-6, atol=1e-9)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["report.html", "results.csv", "results.json",
                                                                    "results.parquet", "run.json"]


def test_block_split_covers_every_item_once(monkeypatch):
    from saelens_amort import distributed

    for world in (1, 2, 3, 7):
        seen = []
        for r in range(world):
            monkeypatch.setattr(distributed, "rank", lambda r=r: r)
            monkeypatch.setattr(distributed, "world", lambda w=world: w)
            seen += list(distributed.block(10))
        assert seen == list(range(10))


FAILING_WORKER = """
import os, sys
from saelens_amort.runners import eval as ev
real = ev.evaluate_sae
def failing(*args, **kwargs):
    if int(os.environ["RANK"]) == 1:
        raise RuntimeError("rank 1 fails mid-run")
    return real(*args, **kwargs)
ev.evaluate_sae = failing
from saelens_amort.cli import main
sys.argv = ["saeamort", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_a_failing_rank_stops_the_run_without_outputs(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(FAILING_WORKER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), *ARGS, "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          env=env, timeout=900, cwd=tmp_path)
    assert proc.returncode != 0 and "rank 1 fails mid-run" in proc.stderr
    out = tmp_path / "out"
    assert not any((out / name).exists() for name in ("results.csv", "results.json", "results.parquet", "report.html"))
