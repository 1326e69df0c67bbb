"""`saeamort eval` / `sweep-semi` end to end in a subprocess on the toy world: outputs, the semi-steps sweep, an SAE
a metric cannot apply to (skipped with its reason), and the bad inputs of the issue (one stderr line, exit 2)."""

import json

import pandas as pd
import pytest
import torch
from helpers import assert_cli_user_error, assert_user_error, saeamort
from sae_lens import StandardSAE, StandardSAEConfig


SMALL = ("--model", "toy", "--tokens", "1024", "--calib-tokens", "512", "--batch-size", "512",
         "--splice-sequences", "2")


def _tiny_sae_dir(path, d_in: int, d_sae: int = 4):
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.1)
    sae.save_model(str(path))
    return path


@pytest.mark.slow
def test_sweep_semi_rows_curves_and_monotone_gap(tmp_path):
    out = tmp_path / "sweep"
    proc = saeamort("sweep-semi", "--steps", "2,8", "--sae", "toy/topk", *SMALL, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    df = pd.read_parquet(out / "results.parquet")
    assert list(df["mode"]) == ["amortized", "semi@2", "semi@8", "unamortized"]
    assert df["lam"].nunique() == 1
    gap = df.set_index("mode")["gap_mean"]
    assert gap["amortized"] >= gap["semi@2"] >= gap["semi@8"] >= gap["unamortized"] - 1e-6  # more steps never hurt
    assert json.loads((out / "results.json").read_text())["config"]["semi_sweep"] == [2, 8]
    html = (out / "report.html").read_text()
    assert "vs semi-amortized steps" in html


@pytest.mark.slow
def test_metric_that_cannot_apply_is_skipped_with_reason(tmp_path):
    sae_dir = _tiny_sae_dir(tmp_path / "tiny", d_in=128, d_sae=4)
    out = tmp_path / "run"
    proc = saeamort("eval", "--sae-path", str(sae_dir), "--modes", "amortized", *SMALL, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    row = pd.read_csv(out / "results.csv").iloc[0]
    assert "f1@5: k=5 exceeds d_sae=4" in row["skipped"] and pd.isna(row["real/f1@5"])
    assert row["real/f1@1"] >= 0 and row["nmse"] > 0


@pytest.mark.slow
def test_metric_subset(tmp_path):
    proc = saeamort("eval", *SMALL, "--sae", "toy/topk", "--modes", "amortized", "--metrics",
                    "reconstruction,sparsity", "--out", str(tmp_path / "m"))
    assert proc.returncode == 0, proc.stderr
    cols = set(pd.read_csv(tmp_path / "m" / "results.csv").columns)
    assert {"nmse", "l0"} <= cols and not any(c.startswith(("real/", "ce_", "gap")) for c in cols)


@pytest.mark.slow
def test_bad_inputs(tmp_path):
    assert_user_error(saeamort("eval", *SMALL, "--modes", "amortized,nope", "--out", str(tmp_path / "a")),
                      "unknown mode.*registered modes: .*amortized")
    assert_user_error(saeamort("eval", *SMALL, "--metrics", "nmse", "--out", str(tmp_path / "a")),
                      "unknown metric.*registered metrics: reconstruction")
    assert_user_error(saeamort("eval", *SMALL, "--tokens", "100", "--out", str(tmp_path / "b")),
                      "smaller than the calibration slice")
    bad = _tiny_sae_dir(tmp_path / "wide", d_in=64)
    assert_user_error(saeamort("eval", *SMALL, "--sae-path", str(bad), "--out", str(tmp_path / "c")),
                      "d_in=64 does not match")
    assert_user_error(saeamort("eval", "--model", "pythia-160m-deduped", "--out", str(tmp_path / "d")),
                      "saeamort eval --model toy")
    assert_user_error(saeamort("sweep-semi", *SMALL, "--steps", "5,x", "--out", str(tmp_path / "e")),
                      "comma-separated integers")
    assert_user_error(saeamort("sweep-semi", *SMALL, "--steps", "0,5", "--out", str(tmp_path / "f")),
                      "distinct positive")
    assert not any((tmp_path / n).exists() for n in "abcdef")  # nothing half-written


def test_unknown_protocol_is_one_line_and_writes_nothing(capsys, tmp_path):
    out = tmp_path / "run"
    assert_cli_user_error(capsys, "unknown --protocol 'papr'; use one of fair, paper", "eval", *SMALL, "--protocol",
                          "papr", "--out", str(out))
    assert_cli_user_error(capsys, "unknown --lambda 'one'", "eval", *SMALL, "--lambda", "one", "--out", str(out))
    assert not out.exists()



def test_the_solvers_compile_in_a_thread_the_interpreter_waits_for():
    """The compiled solvers are warmed up in a background thread. As a daemon it was killed at exit inside LLVM when
    a short run (amortized codes only) ended while numba still compiled: the process aborted with exit 134
    ("terminate called without an active exception") after writing its results (3 of 10 runs in an audit)."""
    import threading

    from saelens_amort.inference.active_set import start_warm_up

    start_warm_up()
    threads = [t for t in threading.enumerate() if t.name == "saeamort-compile"]
    assert threads and not any(t.daemon for t in threads)
    for t in threads:
        t.join(timeout=120)
