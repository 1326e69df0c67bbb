"""A run folder records its config: the same config reruns, a different one (or files of unknown origin) is refused
unless --overwrite, and a refused run touches nothing — for eval's .partial/, tpp, gis, alpha-sweep, interpret and
select-latents alike."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import assert_user_error, saeamort
from saelens_amort.errors import SaeAmortError
from saelens_amort.feature_lists import Feature
from saelens_amort.run_folder import RECORD_FILE, check_run_folder, record_run
from saelens_amort.runners.alpha_sweep import run_alpha_sweep
from saelens_amort.runners.alpha_sweep_config import SweepConfig
from saelens_amort.runners.eval import EvalConfig, run_eval
from saelens_amort.runners.eval_partials import PARTIAL_DIR, load_partials, save_partial
from saelens_amort.runners.gis import run_gis
from saelens_amort.runners.gis_config import GisConfig
from saelens_amort.runners.tpp import run_select, run_tpp
from saelens_amort.runners.tpp_config import TppConfig


def test_same_config_reuses_other_config_is_refused(tmp_path):
    out = tmp_path / "run"
    check_run_folder(out, "tpp", {"a": 1}, overwrite=False)  # absent: free
    out.mkdir()
    check_run_folder(out, "tpp", {"a": 1}, overwrite=False)  # empty: free
    record_run(out, "tpp", {"a": 1, "t": (1, 2)})
    (out / "tpp.csv").write_text("x\n")
    check_run_folder(out, "tpp", {"a": 1, "t": [1, 2]}, overwrite=False)  # same config (as JSON): reused
    with pytest.raises(SaeAmortError, match=r"different tpp config \(a differ\).*--overwrite"):
        check_run_folder(out, "tpp", {"a": 2, "t": [1, 2]}, overwrite=False)
    with pytest.raises(SaeAmortError, match="results of `saeamort tpp`"):
        check_run_folder(out, "gis", {"a": 1, "t": [1, 2]}, overwrite=False)
    check_run_folder(out, "gis", {}, overwrite=True)
    (out / RECORD_FILE).unlink()  # results of unknown origin (e.g. an older version)
    with pytest.raises(SaeAmortError, match="files not written by a run of this config"):
        check_run_folder(out, "tpp", {"a": 1, "t": [1, 2]}, overwrite=False)


EVAL = dict(model="toy", layer=2, saes=("toy/topk",), modes=("amortized",), metrics=("reconstruction",), tokens=256,
            calib_tokens=128, batch_size=256, splice_sequences=0)


def test_eval_of_another_config_keeps_the_partial_results(tmp_path):
    first, other = EvalConfig(**EVAL), EvalConfig(**{**EVAL, "tokens": 384})
    out = tmp_path / "run"
    rows = [{"sae": "toy/topk", "mode": "amortized", "nmse": 0.5}]
    save_partial(out, first.as_json(), 0, rows, {"freqs": {("toy/topk", "amortized"): np.ones(3)}, "gap": np.zeros(0)})
    with pytest.raises(SaeAmortError, match=r"different eval config \(tokens differ\).*--overwrite"):
        run_eval(other, out, progress=False)
    assert load_partials(out, first.as_json())[0][0] == rows  # the interrupted run can still resume
    df = run_eval(other, out, overwrite=True, progress=False)
    assert df["nmse"].iloc[0] != 0.5 and not (out / PARTIAL_DIR).exists()
    assert json.loads((out / RECORD_FILE).read_text())["config"]["tokens"] == 384


@pytest.mark.parametrize("command", ["tpp", "gis", "alpha-sweep", "select-latents"])
def test_runners_refuse_another_runs_out_before_any_work(command, tmp_path):
    out = tmp_path / "out"
    if command == "select-latents":
        out.write_text(json.dumps({"latents": [1], "run": {"command": command, "config": {"top_m": 3}}}))
    else:
        record_run(out, command, {"seed": 99})
    before = {p.name: p.read_bytes() for p in (out.iterdir() if out.is_dir() else [out])}
    with pytest.raises(SaeAmortError, match="--overwrite"):
        if command == "tpp":
            run_tpp(TppConfig(), (2,), out)
        elif command == "gis":
            run_gis(GisConfig(latents=(1,)), out)
        elif command == "alpha-sweep":
            run_alpha_sweep(SweepConfig(), [Feature(2, 1)], out)
        else:
            run_select(TppConfig(), 0, 5, "amortized", out)
    assert before == {p.name: p.read_bytes() for p in (out.iterdir() if out.is_dir() else [out])}


@pytest.mark.slow
def test_interpret_cli_refuses_another_runs_out(tmp_path):
    record_run(tmp_path / "views", "interpret", {"top_n": 3})
    assert_user_error(saeamort("interpret", "--out", str(tmp_path / "views"), "--tokens", "2048"),
                      "different interpret config.*--overwrite")
