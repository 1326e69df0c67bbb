"""A world end to end: an SAE trained on it through the train runner, then eval on its activations alone, scored
against the truth, with the oracle (true dictionary) as the ceiling."""

import pandas as pd
import pytest
from saelens_amort.errors import SaeAmortError
from saelens_amort.runners.eval import EvalConfig, run_eval
from saelens_amort.training.config import TrainConfig
from saelens_amort.training.run import run_train
from saelens_amort.world import WorldConfig, build_world

CFG = WorldConfig(d=32, n_features=64, n_tokens=14_336, mean_l0=4.0, n_parents=4, children=2, child_prob=0.5,
                  n_groups=4, group_size=2, noise=0.01, shard_tokens=4096, seed=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("world-eval")
    world = build_world(CFG, root / "world")
    summary = run_train(TrainConfig(arch="topk", activations=str(world.path), tokens=10_240, batch_size=512,
                                    expansion=2, k=4, lr=3e-3), root / "topk", progress=False)
    return root, world, summary


def test_eval_on_a_world_scores_every_mode_against_the_truth(trained):
    root, world, summary = trained
    assert summary["l0"] == pytest.approx(4, abs=0.5)
    cfg = EvalConfig(activations=str(world.path), saes=(str(root / "topk" / "sae"), "oracle"),
                     modes=("amortized", "unamortized"), tokens=4096, calib_tokens=1024, batch_size=1024)
    df = run_eval(cfg, root / "eval", progress=False)
    assert len(df) == 4
    oracle = df[df.sae == "oracle"].set_index("mode")
    assert oracle.loc["unamortized", "recovered"] == 1.0
    assert oracle.loc["unamortized", "code_mcc"] > 0.9
    assert oracle.loc["unamortized", "code_mcc"] > oracle.loc["amortized", "code_mcc"]
    trained_rows = df[df.sae != "oracle"]
    assert trained_rows["code_mcc"].between(-1, 1).all() and trained_rows["recovered"].between(0, 1).all()
    assert all("activation-only evaluation" in s for s in df["skipped"])
    assert pd.read_parquet(root / "eval" / "results.parquet").shape == df.shape


def test_bad_inputs_are_refused_before_any_work(trained, tmp_path):
    root, world, _ = trained
    other = build_world(WorldConfig(d=16, n_features=32, n_tokens=2048, mean_l0=3.0, n_parents=2, n_groups=2),
                        tmp_path / "other")
    with pytest.raises(SaeAmortError, match="reads d_in=32, the activations .* have d=16"):
        run_eval(EvalConfig(activations=str(other.path), saes=(str(root / "topk" / "sae"),), tokens=1024),
                 tmp_path / "e1", progress=False)
    plain = root / "topk"  # not a store at all
    with pytest.raises(SaeAmortError, match="not an activation store"):
        run_eval(EvalConfig(activations=str(plain), saes=("oracle",), tokens=1024), tmp_path / "e2", progress=False)
    assert not (tmp_path / "e1" / "results.parquet").exists() and not (tmp_path / "e2").exists()


def test_frontier_on_a_world_reads_its_activations_and_the_oracle(trained, tmp_path):
    from saelens_amort.runners.frontier import run_frontier
    from saelens_amort.runners.frontier_config import FrontierConfig

    root, world, _ = trained
    cfg = FrontierConfig(eval=EvalConfig(activations=str(world.path), saes=(str(root / "topk" / "sae"), "oracle"),
                                         modes=("amortized", "ksparse"), metrics=("reconstruction", "sparsity"),
                                         tokens=2048, calib_tokens=1024, batch_size=1024), k_multipliers=(0.5, 1, 2))
    points, prices = run_frontier(cfg, tmp_path / "frontier", progress=False)
    assert set(points["sae"]) == {str(root / "topk" / "sae"), "oracle"}
    oracle = points[(points.sae == "oracle") & (points["mode"] == "ksparse")].sort_values("l0")
    assert len(oracle) == 3 and oracle["nmse"].is_monotonic_decreasing
    assert "ce_recovered" not in points.columns  # no model: nothing spliced
    assert (tmp_path / "frontier" / "report.html").exists()
