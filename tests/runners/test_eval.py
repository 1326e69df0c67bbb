"""run_eval on the toy world: every SAE × mode row, consistent λ and gap, atomic outputs, a report that renders."""

import json

import pandas as pd
import pytest
from helpers import chromium_probe

from saelens_amort import SaeAmortError
from saelens_amort.runners.eval import EvalConfig, run_eval

CFG = EvalConfig(model="toy", layer=2, saes=("toy/topk", "toy/standard"), tokens=1536, calib_tokens=512,
                 batch_size=512, splice_sequences=4)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    return out, run_eval(CFG, out, progress=False)


@pytest.mark.slow
def test_rows_metrics_and_gap(evaluated):
    out, df = evaluated
    assert list(zip(df["sae"], df["mode"])) == [(s, m) for s in CFG.saes for m in CFG.modes]
    for sae, rows in df.groupby("sae"):
        rows = rows.set_index("mode")
        assert rows["lam"].nunique() == 1 and rows["lam"].iloc[0] > 0  # one λ per SAE
        assert rows.loc["unamortized", "gap_mean"] == pytest.approx(0.0, abs=1e-6)
        assert rows.loc["semi", "gap_mean"] <= rows.loc["amortized", "gap_mean"] + 1e-6
        assert rows.loc["amortized", "ce_recovered_keep_error"] == pytest.approx(1.0, abs=1e-4)
        assert rows.loc["amortized", "flops_per_token"] < rows.loc["unamortized", "flops_per_token"]
        assert 0 < rows.loc["amortized", "nmse"] < 0.1 and rows["l0"].min() > 1
    assert (df["real/f1@1"] > 0).all() and df["pseudo/f1@1"].notna().all()


@pytest.mark.slow
def test_outputs_and_report(evaluated, tmp_path):
    out, df = evaluated
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "results.csv", "results.json", "results.parquet"]
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"), df, check_dtype=False)
    meta = json.loads((out / "results.json").read_text())
    assert meta["config"]["saes"] == list(CFG.saes) and meta["hook_name"] == "blocks.2.hook_resid_post"
    assert set(meta["lambda"]) == set(CFG.saes) and meta["provenance"]["versions"]["sae-lens"]
    probe = chromium_probe(out / "report.html", tmp_path)
    assert probe["errors"] == []
    drawn = [p for p in probe["plots"] if p["traces"] and p["points"]]
    assert len(drawn) == 5  # bars, firing histograms, Pareto, gap, cost (semi curves need sweep-semi)


@pytest.mark.slow
def test_refuses_other_config_in_same_out(evaluated):
    out, _ = evaluated
    other = EvalConfig(**{**CFG.__dict__, "semi_steps": 5})
    with pytest.raises(SaeAmortError, match="different eval config"):
        run_eval(other, out, progress=False)


def test_bad_configs():
    with pytest.raises(SaeAmortError, match="unknown mode"):
        EvalConfig(model="toy", modes=("amortized", "nope"))
    with pytest.raises(SaeAmortError, match="smaller than the calibration slice"):
        EvalConfig(model="toy", tokens=100, calib_tokens=512)
    with pytest.raises(SaeAmortError, match="lambda-target"):
        EvalConfig(model="toy", lambda_target="l1")
