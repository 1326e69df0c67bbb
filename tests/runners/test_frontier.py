"""run_frontier on the toy world: the encoder's own knobs (set and restored), curve planning, outputs and prices."""

import json
import math

import pandas as pd
import pytest
import torch
from helpers import chromium_probe

from saelens_amort import SaeAmortError
from saelens_amort.activations import CollectConfig, collect_activations, resolve_source
from saelens_amort.inference import infer, register_mode, registry
from saelens_amort.inference.amortized import encode
from saelens_amort.models import load_model
from saelens_amort.runners.eval import EvalConfig
from saelens_amort.runners.frontier import encoder_at, encoder_knob, plan_curves, run_frontier, trace
from saelens_amort.runners.frontier_config import FrontierConfig
from saelens_amort.saes import Dictionary, load_sae

HOOK = "blocks.2.hook_resid_post"


@pytest.fixture(scope="module")
def acts():
    model = load_model("toy")
    store = collect_activations(model, resolve_source("toy", seed=0),
                                CollectConfig(hook_name=HOOK, n_tokens=512, context_size=128, seed=0), None,
                                model_name="toy", progress=False)
    return store.load(512).acts


def _l0(sae, x):
    return (infer(x, sae, "amortized").codes > 0).sum(-1).float()


def test_topk_knob_sets_k_and_restores_it(acts):
    sae = load_sae("toy/topk")
    native = sae.cfg.k
    assert encoder_knob(sae) == "k"
    with encoder_at(sae, "k", 4):
        assert (_l0(sae, acts) == 4).all()
    assert sae.cfg.k == native and (_l0(sae, acts) == native).all()
    with pytest.raises(RuntimeError), encoder_at(sae, "k", 2):
        raise RuntimeError
    assert sae.cfg.k == sae.activation_fn.k == native


def test_jumprelu_knob_scales_thresholds_and_restores_them(acts):
    sae = load_sae("toy/jumprelu")
    before = sae.threshold.detach().clone()
    assert encoder_knob(sae) == "threshold_scale"
    l0 = {}
    for scale in (0.5, 1.0, 2.0):
        with encoder_at(sae, "threshold_scale", scale):
            l0[scale] = float(_l0(sae, acts).mean())
            assert torch.allclose(sae.threshold, before * scale)
    assert l0[0.5] > l0[1.0] > l0[2.0]
    assert torch.equal(sae.threshold, before)


def test_plan_curves_grids_and_skips(acts, monkeypatch):
    monkeypatch.setattr(registry, "_MODES", dict(registry._MODES))  # the test mode leaves with the test
    register_mode("frontier_test_mode", encode, needs_lambda=False, needs_sae=True, options=())
    cfg = FrontierConfig(eval=EvalConfig(model="toy", layer=2, modes=("amortized", "unamortized", "omp",
                                                                      "frontier_test_mode")),
                         n_lambdas=5, lambda_ratio=100.0)
    sae = load_sae("toy/topk")
    dictionary = Dictionary.of(sae)
    curves, skipped = plan_curves(sae, dictionary, acts, cfg)
    by_mode = {c.mode: c for c in curves}
    assert set(by_mode) == {"amortized", "unamortized", "omp"} and "frontier_test_mode" in skipped
    k = sae.cfg.k
    assert by_mode["amortized"].values == (k // 4, k // 2, k, 2 * k, 4 * k) and by_mode["amortized"].encoder_value == k
    assert by_mode["omp"].values == (k // 4, k // 2, k, 2 * k, 4 * k)
    lams = by_mode["unamortized"].values
    assert len(lams) == 5 and lams[0] / lams[-1] == pytest.approx(100.0)
    # λ_max: all codes zero there, some non-zero just below
    x = acts[:256]
    assert (infer(x, sae, "unamortized", lam=lams[0]).codes == 0).all()
    assert (infer(x, sae, "unamortized", lam=0.9 * lams[0]).codes > 0).any()
    standard = load_sae("toy/standard")
    curves, _ = plan_curves(standard, Dictionary.of(standard), acts, cfg)
    assert curves[0].knob is None and curves[0].values == (None,)


def test_explicit_grids_count_each_value_once_and_set_the_topk_encoders_k(acts):
    cfg = FrontierConfig(eval=EvalConfig(model="toy", layer=2, modes=("amortized", "unamortized", "ksparse")),
                         lambdas=(4.0, 4.0, 2.0), ks=(32, 8, 32))
    sae = load_sae("toy/topk")
    by_mode = {c.mode: c for c in plan_curves(sae, Dictionary.of(sae), acts, cfg)[0]}
    assert by_mode["unamortized"].values == (4.0, 2.0) and by_mode["ksparse"].values == (8, 32)
    assert sae.cfg.k == 16 and by_mode["amortized"].values == (8, 16, 32)  # the grid and the trained k
    assert by_mode["amortized"].encoder_value == 16


def test_paper_protocol_curves_run_its_fixed_ista_steps(acts):
    sae = load_sae("toy/topk")
    for protocol, semi, unamortized in (("fair", {"steps": 10}, {}),
                                        ("paper", {"steps": 30, "tol": 0.0, "solver": "ista"},
                                         {"steps": 200, "tol": 0.0, "solver": "ista"})):
        cfg = FrontierConfig(eval=EvalConfig(model="toy", layer=2, modes=("semi", "unamortized"), protocol=protocol),
                             lambdas=(20.0, 10.0))  # below λ_max: a warm start from λ 20 would not be from zero
        by_mode = {c.mode: c for c in plan_curves(sae, Dictionary.of(sae), acts, cfg)[0]}
        assert by_mode["semi"].options == semi and by_mode["unamortized"].options == unamortized
    # and trace solves them as eval's paper protocol does: exactly 200 ISTA steps from zero, no λ-path warm start
    curve = by_mode["unamortized"]
    rows = trace([acts[:64]], sae, [curve])
    for row, lam in zip(rows, curve.values):
        alone = infer(acts[:64], sae, "unamortized", lam=lam, **unamortized)
        assert row["objective"] == pytest.approx(float(alone.objective.double().mean()), rel=1e-12)


def test_explicit_k_grid_is_checked_against_d_sae():
    with pytest.raises(SaeAmortError, match="exceed the SAE's d_sae=1024"):
        FrontierConfig(ks=(8, 4096)).check_sae(load_sae("toy/topk"))
    for bad in (dict(ks=(0, 4)), dict(k_multipliers=()), dict(threshold_scales=()), dict(lambdas=(-1.0,)),
                dict(lambdas=(math.inf,)), dict(k_multipliers=(math.inf,)), dict(threshold_scales=(math.nan,)),
                dict(lambda_ratio=math.inf)):
        with pytest.raises(SaeAmortError):
            FrontierConfig(**bad)


@pytest.mark.slow
def test_run_writes_frontiers_prices_and_report(tmp_path):
    cfg = FrontierConfig(eval=EvalConfig(model="toy", layer=2, saes=("toy/topk", "toy/standard"),
                                         modes=("amortized", "unamortized", "omp"), tokens=512, calib_tokens=256,
                                         batch_size=256, splice_sequences=2),
                         n_lambdas=4, lambda_ratio=30.0)
    out = tmp_path / "run"
    points, prices = run_frontier(cfg, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["frontier.csv", "frontier.json", "frontier.parquet",
                                                     "report.html", "run.json"]
    pd.testing.assert_frame_equal(pd.read_parquet(out / "frontier.parquet"), points, check_dtype=False)
    assert {"sae", "mode", "knob", "value", "l0", "nmse", "fvu", "ce_recovered", "kl"} <= set(points.columns)
    enc = points[points["encoder_point"]].set_index("sae")
    assert list(enc.index) == ["toy/topk", "toy/standard"] and enc.loc["toy/topk", "l0"] == 16
    assert list(zip(prices["sae"], prices["mode"])) == [(s, m) for s in cfg.eval.saes for m in ("unamortized", "omp")]
    reached = prices.dropna(subset=["nmse_ratio"])
    assert len(reached) and (reached["nmse_ratio"] > 0).all()
    meta = json.loads((out / "frontier.json").read_text())
    assert len(meta["prices"]) == len(prices) and meta["config"]["n_lambdas"] == 4
    probe = chromium_probe(out / "report.html", tmp_path)
    assert probe["errors"] == [] and any(p["traces"] and p["points"] for p in probe["plots"])
    with pytest.raises(SaeAmortError, match="different frontier config"):
        run_frontier(FrontierConfig(eval=cfg.eval, n_lambdas=3), out, progress=False)
