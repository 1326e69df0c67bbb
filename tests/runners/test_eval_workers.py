"""`eval --workers N`: local worker processes give one process's results; a worker that dies stops the run with one
clear error and no outputs; bad combinations are refused before anything starts."""

import os
import signal
import subprocess

import pandas as pd
import pytest
import torch

from saelens_amort import distributed
from saelens_amort.cli import main
from saelens_amort.errors import SaeAmortError
from saelens_amort.runners import eval as ev
from saelens_amort.runners.eval_config import EvalConfig
from saelens_amort.runners.eval_workers import check_workers

ARGS = ["eval", "--model", "toy", "--sae", "toy/topk", "--modes", "amortized,semi,unamortized,ksparse",
        "--tokens", "2048", "--calib-tokens", "512", "--batch-size", "512", "--splice-sequences", "2",
        "--metrics", "reconstruction,sparsity,gap,splice"]
OUTPUTS = ("results.csv", "results.json", "results.parquet", "report.html")


def _cli(args):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code


def _children() -> list[int]:
    """This process's worker processes (by their command line)."""
    out = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(os.getpid())], capture_output=True,
                         text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "eval_workers" in line]


def test_two_workers_equal_one_process(tmp_path):
    threads = torch.get_num_threads()
    assert _cli([*ARGS, "--out", str(tmp_path / "one")]) == 0
    assert _cli([*ARGS, "--workers", "2", "--out", str(tmp_path / "two")]) == 0
    one, two = pd.read_csv(tmp_path / "one" / "results.csv"), pd.read_csv(tmp_path / "two" / "results.csv")
    timing = [c for c in one.columns if "second" in c]
    pd.testing.assert_frame_equal(one.drop(columns=timing), two.drop(columns=timing), rtol=1e-6, atol=1e-9)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted([*OUTPUTS, "run.json"])
    # the calling process is itself again: no group, its thread count, no worker left
    assert not distributed.active() and torch.get_num_threads() == threads and not _children()


def test_a_worker_that_dies_stops_the_run_with_one_error_and_no_outputs(tmp_path, monkeypatch, capsys):
    real = ev.evaluate

    def kill_workers_first(*args, **kwargs):  # rank 0 evaluates while its worker is gone
        for pid in _children():
            os.kill(pid, signal.SIGKILL)
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "evaluate", kill_workers_first)
    assert _cli([*ARGS, "--workers", "2", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("saeamort: error: worker 1 stopped (exit -9)"), err
    assert "Traceback" not in "\n".join(err)
    assert not any((tmp_path / "out" / name).exists() for name in OUTPUTS)
    assert not distributed.active() and not _children()


def test_workers_refuse_a_gpu_and_torchrun(monkeypatch):
    check_workers(1, "cuda")  # one process: anything goes
    with pytest.raises(SaeAmortError, match="CPU processes"):
        check_workers(2, "cuda:0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SaeAmortError, match="torchrun"):
        check_workers(2, "cpu")


def test_bad_worker_counts_are_usage_errors(tmp_path, capsys):
    for bad in ("0", "-1", "two"):
        assert _cli([*ARGS, "--workers", bad, "--out", str(tmp_path / "out")]) == 2
        assert "workers" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_config_travels_to_the_workers_as_json():
    cfg = EvalConfig(model="toy", saes=("toy/topk",), modes=("amortized", "semi"), semi_sweep=(5, 10),
                     extra={"note": "x"})
    assert EvalConfig.from_json(cfg.as_json()) == cfg


def test_workers_started_early_are_stopped_when_the_run_is_refused(tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("someone else's")
    assert _cli([*ARGS, "--workers", "2", "--out", str(out)]) == 2
    assert "--out" in capsys.readouterr().err
    assert not _children() and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
