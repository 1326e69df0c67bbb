"""run_eval on the toy world: every SAE × mode row, consistent λ and gap, atomic outputs, a report that renders."""

import json

import pandas as pd
import pytest
import torch
from helpers import batch_topk_training_sae, chromium_probe

from saelens_amort import SaeAmortError, load_model, load_sae
from saelens_amort.activations import CollectConfig, collect_activations, resolve_source
from saelens_amort.inference.calibrate import mean_l0
from saelens_amort.runners.eval import EvalConfig, evaluate_sae, run_eval

CFG = EvalConfig(model="toy", layer=2, saes=("toy/topk", "toy/standard"), modes=("amortized", "semi", "unamortized"),
                 lambda_policy="shared", tokens=1536, calib_tokens=512, batch_size=512, splice_sequences=4)


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
        # the unamortized row is the mode as run; z* also finishes the rows its budget left uncertified
        unam = rows.loc["unamortized"]
        assert unam["ref_converged_frac"] >= unam["converged_frac"]
        if unam["converged_frac"] == 1:
            assert unam["gap_mean"] == pytest.approx(0.0, abs=1e-6)
        else:
            assert -1e-6 <= unam["gap_mean"] <= 1e-3 * rows.loc["amortized", "gap_mean"]
        assert rows.loc["semi", "gap_mean"] <= rows.loc["amortized", "gap_mean"] + 1e-6
        assert rows.loc["amortized", "ce_recovered_keep_error"] == pytest.approx(1.0, abs=1e-4)
        assert rows.loc["amortized", "flops_per_token"] < rows.loc["unamortized", "flops_per_token"]
        assert 0 < rows.loc["amortized", "nmse"] < 0.1 and rows["l0"].min() > 1
    assert (df["real/f1@1"] > 0).all() and df["pseudo/f1@1"].notna().all()


@pytest.mark.slow
def test_outputs_and_report(evaluated, tmp_path):
    out, df = evaluated
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "results.csv", "results.json", "results.parquet",
                                                    "run.json"]
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"), df, check_dtype=False)
    meta = json.loads((out / "results.json").read_text())
    assert meta["config"]["saes"] == list(CFG.saes) and meta["hook_name"] == "blocks.2.hook_resid_post"
    assert set(meta["lambda"]) == set(CFG.saes) and meta["provenance"]["versions"]["sae-lens"]
    for row in meta["rows"]:  # every λ-row's own λ, not one per SAE
        assert meta["lambda"][row["sae"]].get(row["mode"]) == row["lam"]
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


def _toy_store(tmp_path_factory, n_tokens):
    model = load_model("toy")
    request = CollectConfig(hook_name="blocks.2.hook_resid_post", n_tokens=n_tokens, context_size=128, seed=0)
    store = collect_activations(model, resolve_source("toy"), request, tmp_path_factory.mktemp("acts"),
                                model_name="toy", progress=False)
    return model, store


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    return _toy_store(tmp_path_factory, 2304)


def test_batch_dependent_encoder_rows_counts_and_convergence(toy_store):
    model, store = toy_store
    sae = batch_topk_training_sae()
    # One 2304-row batch (more than a solver chunk) and 2100 calibration rows (more than infer's 2048).
    cfg = EvalConfig(model="toy", layer=2, semi_steps=0, modes=("amortized", "semi", "unamortized"),
                     lambda_policy="shared",
                     metrics=("reconstruction", "sparsity", "probes", "gap", "cost"), tokens=2304, calib_tokens=2100,
                     batch_size=2304, splice_sequences=0)
    rows, _ = evaluate_sae("batchtopk-training", sae, model, store, "blocks.2.hook_resid_post", cfg, None)
    df = pd.DataFrame(rows).set_index("mode")
    with torch.no_grad():
        target = mean_l0(sae.encode(store.load().acts)[:2100])
    for col in ("nmse", "l0", "gap_mean", "dense_rate@0.1"):  # semi at K = 0 is the amortized code itself
        assert df.loc["semi", col] == df.loc["amortized", col], col
    assert df["lambda_target_value"].iloc[0] == pytest.approx(target) and df["lambda_calib_rows"].eq(2100).all()
    assert df["reconstruction/n_tokens"].eq(2304).all() and df["gap/n_tokens"].eq(2304).all()
    assert (df["probes/n_train"] + df["probes/n_test"]).gt(0).all() and df["n_iter_mean"].notna().all()
    assert df.loc["amortized", "converged_frac"] == 1.0 and 0 <= df.loc["unamortized", "converged_frac"] <= 1
    assert df["ref_converged_frac"].eq(df.loc["unamortized", "converged_frac"]).all()


def test_dense_target_without_a_dense_latent_is_stated_and_the_eval_goes_on(tmp_path_factory):
    model, store = _toy_store(tmp_path_factory, 256)
    sae = load_sae("toy/standard")
    with torch.no_grad():  # switch off every latent that fires on ≥ 5 % of the rows: no dense latent is left
        sae.b_enc[(sae.encode(store.load().acts) > 0).float().mean(dim=0) >= 0.05] = -1e4
    cfg = EvalConfig(model="toy", layer=2, modes=("amortized", "unamortized"), metrics=("sparsity",), tokens=256,
                     calib_tokens=256, batch_size=256, splice_sequences=0, lambda_target="dense@0.1")
    rows, _ = evaluate_sae("no-dense", sae, model, store, "blocks.2.hook_resid_post", cfg, None)
    df = pd.DataFrame(rows).set_index("mode")
    assert df["dense_rate@0.1"].eq(0).all() and df["lambda_target"].eq("l0").all() and df["lam"].gt(0).all()
    assert df["skipped"].str.contains("dense@0.1 target: no amortized latent fires on ≥ 0.1 of the 256").all()
    assert df["lambda_target_value"].iloc[0] == pytest.approx(df.loc["amortized", "l0"])
