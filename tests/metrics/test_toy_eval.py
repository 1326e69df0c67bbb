"""Integration: 4096 toy activations streamed through amortized and unamortized codes of toy/topk, every batch
metric computed, ranges sanity-checked."""

import pytest
from helpers import toy_model, torch_threads

import saelens_amort
from saelens_amort.activations import CollectConfig, collect_activations
from saelens_amort.activations.sources import ToySource
from saelens_amort.inference import calibrate_lambda, resolve_dictionary
from saelens_amort.metrics import list_metrics, make_metric, metric_batch
from saelens_amort.metrics.gap import NEGATIVE_RTOL
from saelens_amort.toy.corpus import LABEL_NAMES

HOOK = "blocks.2.hook_resid_post"
STEPS = {"amortized": {}, "unamortized": {"steps": 100}}
"""Iteration budgets that keep the test fast (the reference z* gets 400)."""
BATCH_METRICS = ["reconstruction", "sparsity", "probes", "absorption", "gap", "cost"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    with torch_threads(1):
        store = collect_activations(
            toy_model(), ToySource(None, seed=3), CollectConfig(hook_name=HOOK, n_tokens=4096, context_size=128),
            tmp_path_factory.mktemp("acts"), model_name="toy", progress=False,
        )
        sae = saelens_amort.load_sae("toy/topk")
        dictionary = resolve_dictionary(sae)
        lam = calibrate_lambda(store.load(256).acts, sae, "unamortized", steps=100).lam
        metrics = {mode: {name: make_metric(name, **({"label_names": LABEL_NAMES}
                                                      if name in ("probes", "absorption") else {}))
                          for name in BATCH_METRICS} for mode in ("amortized", "unamortized")}
        for batch in store.iter_batches(2048):
            star = saelens_amort.infer(batch.acts, sae, "unamortized", lam=lam, tol=1e-6, steps=400).objective
            for mode, family in metrics.items():
                result = saelens_amort.infer(batch.acts, sae, mode, lam=lam, **STEPS[mode])
                mb = metric_batch(batch.acts, result, dictionary, labels=batch.labels, token_ids=batch.token_ids,
                                  doc_ids=batch.doc_ids, objective_star=star)
                for metric in family.values():
                    metric.update(mb)
        return {mode: {name: (m.compute(), dict(m.skipped)) for name, m in family.items()}
                for mode, family in metrics.items()}


def test_every_batch_metric_runs(results):
    assert set(BATCH_METRICS) <= set(list_metrics())
    for mode, family in results.items():
        for name, (values, skipped) in family.items():
            assert values, (mode, name)
            assert all(v is None or v == v for v in values.values()), (mode, name, values)  # no NaN
            assert set(skipped) <= {k for k, v in values.items() if v is None}


def test_ranges(results):
    amort, unamort = results["amortized"], results["unamortized"]
    for family in (amort, unamort):
        rec = family["reconstruction"][0]
        assert 0 < rec["nmse"] <= rec["fvu"] < 0.5
        sp = family["sparsity"][0]
        assert sp["n_tokens"] == 4096 and 0 <= sp["dead_rate"] < 1 and 0 <= sp["dense_rate@0.2"] <= sp["dense_rate@0.1"]
        probes = family["probes"][0]
        for key, value in probes.items():
            if "f1@" in key or "delta_f1" in key:
                assert value is not None and -1 <= value <= 1, key
        assert probes["real/f1@5"] > 0.5  # 5 latents tell a token's document class apart well above chance (0.2)
        assert probes["n_test"] > 0.1 * 4096 and probes["n_train"] + probes["n_test"] == 4096
        for key, value in family["absorption"][0].items():
            if key.endswith("_rate"):
                assert value is not None and 0 <= value <= 1, key
    assert amort["sparsity"][0]["l0"] == 16.0  # the SAE's TopK
    assert 5 < unamort["sparsity"][0]["l0"] < 50
    assert amort["gap"][0]["gap_mean"] > 0 and amort["gap"][0]["gap_median"] > 0
    # unamortized (100 steps) against z* (400 steps): ≥ 0 up to fp32 rounding of the objectives (relative to F(z*))
    assert unamort["gap"][0]["gap_relative"] >= -NEGATIVE_RTOL
    assert unamort["gap"][0]["gap_mean"] < 0.1 * amort["gap"][0]["gap_mean"]
    assert unamort["gap"][0]["frac_negative"] < 0.05
    # counted: the encoder's product, and the objective's sparse product uA (16 codes per row) at the run's λ
    assert amort["cost"][0]["flops_per_token"] == 2 * 128 * 1024 + 2 * 16 * 128
    assert unamort["cost"][0]["flops_per_token"] > amort["cost"][0]["flops_per_token"]
    assert all(results[m]["cost"][0]["seconds_per_token"] > 0 for m in results)
