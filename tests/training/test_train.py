"""`saeamort train` on the toy world: every family learns, LocA beats its global initialisation, checkpoints feed
dynamics, resume continues exactly, and bad input gets one line."""

import json
import shutil

import pytest
import torch
from helpers import assert_user_error, saeamort
from sae_lens import SAE, TopKTrainingSAE

from saelens_amort import SaeAmortError
from saelens_amort.training.config import ARCHS, TrainConfig
from saelens_amort.training.loca import loca_from_topk
from saelens_amort.training.run import held_out_rows, run_train

SMALL = dict(model="toy", layer=2, tokens=51_200, batch_size=256, expansion=4, k=8, lr=3e-3, seed=0)


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "loca"])
def test_every_family_learns(arch, tmp_path):
    summary = run_train(TrainConfig(arch=arch, **SMALL), tmp_path / arch, progress=False)
    losses = _losses(tmp_path / arch)
    assert len(losses) == 200 and sum(losses[-20:]) < 0.5 * sum(losses[:20])
    sae = SAE.load_from_disk(tmp_path / arch / "sae")
    assert sae.cfg.d_sae == 512 and summary["explained_variance"] > 0.5 and summary["l0"] > 0


@pytest.mark.slow
def test_loca_beats_its_global_initialisation(tmp_path):
    out = tmp_path / "loca"
    cfg = TrainConfig(arch="loca", budgets=(4, 3, 2, 1), **{**SMALL, "tokens": 102_400})
    run_train(cfg, out, progress=False)
    from saelens_amort.activations import CollectConfig, collect_activations, resolve_source
    from saelens_amort.models import load_model

    store = collect_activations(load_model("toy"), resolve_source("toy"), CollectConfig(
        hook_name="blocks.2.hook_resid_post", n_tokens=cfg.tokens + 4096, context_size=128), None, model_name="toy",
        progress=False)
    held = held_out_rows(store, cfg.tokens)
    init = loca_from_topk(TopKTrainingSAE.load_from_disk(out / "pretrain_topk" / "training"),
                          store.load(32_768).acts.float(), cfg.budgets)
    final = SAE.load_from_disk(out / "sae")
    with torch.no_grad():
        mse = lambda s: float((s.decode(s.encode(held)) - held).pow(2).sum(-1).mean())  # noqa: E731
        assert mse(final) < mse(init)
    assert final.cfg.budgets == [4, 3, 2, 1]


def test_loca_fine_tunes_on_the_batches_after_the_pretraining_ones(tmp_path, monkeypatch):
    from itertools import islice

    import saelens_amort.training.run as run_module

    calls, real_fit = [], run_module._fit

    def recording_fit(sae, cfg, data_fn, steps, *args, **kwargs):
        calls.append((data_fn, steps))
        return real_fit(sae, cfg, data_fn, steps, *args, **kwargs)

    monkeypatch.setattr(run_module, "_fit", recording_fit)
    cfg = TrainConfig(arch="loca", budgets=(2, 1), **{**SMALL, "tokens": 2048, "batch_size": 128})
    run_train(cfg, tmp_path / "loca", progress=False)
    (pre_data, pre_steps), (fine_data, fine_steps) = calls
    assert pre_steps + fine_steps == cfg.n_steps == 16
    stream = list(islice(pre_data(0), pre_steps + fine_steps))  # one pass over the --tokens rows
    for skip in (0, 3):  # 3: a resumed fine-tune
        fine = list(islice(fine_data(skip), fine_steps - skip))
        assert all(torch.equal(a, b) for a, b in zip(fine, stream[pre_steps + skip:], strict=True))


@pytest.mark.slow
def test_checkpoints_resume_and_dynamics(tmp_path):
    cfg = TrainConfig(arch="topk", checkpoint_every=20, **{**SMALL, "tokens": 15_360})
    a = tmp_path / "a"
    run_train(cfg, a, progress=False)
    ckpts = sorted((a / "checkpoints").iterdir(), key=lambda p: int(p.name))
    # after exactly 20 and 40 of the 60 steps (SAE-Lens' own thresholds saved a step late)
    assert [int(p.name) for p in ckpts] == [20 * 256, 40 * 256]
    b = tmp_path / "b"
    shutil.copytree(a, b)
    shutil.rmtree(b / "sae")
    shutil.rmtree(b / "checkpoints" / ckpts[-1].name)
    (b / "summary.json").unlink()
    with pytest.raises(SaeAmortError, match="unfinished run"):
        run_train(cfg, b, progress=False)
    run_train(cfg, b, resume=True, progress=False)
    x = torch.randn(64, 128)
    sa, sb = SAE.load_from_disk(a / "sae"), SAE.load_from_disk(b / "sae")
    torch.testing.assert_close(sb.W_dec, sa.W_dec, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(sb.encode(x), sa.encode(x), atol=1e-4, rtol=1e-4)
    from saelens_amort.runners.dynamics import index_checkpoints

    index = index_checkpoints(a / "checkpoints")
    assert list(index["step_source"]) == ["metadata", "metadata"] and list(index["step"]) == [20, 40]
    assert list(index_checkpoints(b / "checkpoints")["step"]) == [20, 40]  # the resumed run's counter too
    # b resumed from step 20 with a's whole log (steps past 20 included): they are dropped, not logged twice
    log_a = [json.loads(ln) for ln in (a / "train_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(ln) for ln in (b / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_a] == list(range(1, 61)) == [r["step"] for r in log_b]
    assert [r["loss"] for r in log_b] == pytest.approx([r["loss"] for r in log_a], rel=1e-4)
    steps_run = [json.loads((d / "summary.json").read_text())["steps_this_run"] for d in (a, b)]
    assert steps_run == [60, 40]  # tokens/s counts what each process trained


@pytest.mark.slow
def test_bad_inputs(tmp_path):
    with pytest.raises(SaeAmortError, match="unknown architecture 'nope'; registered: standard"):
        TrainConfig(arch="nope")
    with pytest.raises(SaeAmortError, match="need 20480 training tokens"):
        TrainConfig(tokens=10_000, steps=20, batch_size=1024)
    with pytest.raises(SaeAmortError, match="k=5000 exceeds d_sae=1024"):
        TrainConfig(k=5000).check_fits(128)
    with pytest.raises(SaeAmortError, match="do not fit"):
        TrainConfig(arch="loca", budgets=(600, 1)).check_fits(128)
    assert_user_error(saeamort("train", "--arch", "nope", "--out", str(tmp_path / "x")), "unknown architecture")
    assert_user_error(saeamort("train", "--resume", "--out", str(tmp_path / "y")), "no training run to resume")
    (tmp_path / "bad.yaml").write_text("arch: topk\nlearning_rate: 3\n")
    assert_user_error(saeamort("train", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "z")),
                      "unknown keys")
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()


def test_shipped_recipes_load():
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    assert {p.stem for p in recipes} >= {"relu_l1", "topk", "batchtopk", "loca"}
    for path in recipes:
        cfg = TrainConfig.from_yaml(path, tokens=1 << 20)
        assert cfg.arch in ARCHS
    classic = TrainConfig.from_yaml(recipes[[p.stem for p in recipes].index("relu_l1")], tokens=1 << 20, lr=1e-3)
    assert (classic.expansion, classic.l1_coefficient, classic.lr_warm_up_steps, classic.lr_end) == (8, 20.0, 30, 1.5e-3)
    assert classic.lr == 1e-3 and classic.normalize_activations == "layer_norm"  # given options override the recipe


@pytest.mark.slow
def test_relu_l1_recipe_trains_a_sparse_sae(tmp_path):
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[2] / "configs" / "relu_l1.yaml"
    cfg = TrainConfig.from_yaml(recipe)  # the recipe as shipped: 300 steps of 1024 tokens, 30 warm-up steps
    summary = run_train(cfg, tmp_path / "relu_l1", progress=False)
    assert summary["l0"] < 0.08 * 1024 and summary["explained_variance"] > 0.95  # 3e-4 gave L0 656 of 1024


@pytest.mark.slow
def test_live_training_caches_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEAMORT_CACHE", str(tmp_path / "cache"))
    summary = run_train(TrainConfig(arch="topk", live=True, **{**SMALL, "tokens": 25_600}), tmp_path / "live",
                        progress=False)
    losses = _losses(tmp_path / "live")
    assert len(losses) == 100 and sum(losses[-10:]) < 0.5 * sum(losses[:10])
    assert summary["held_out_rows"] == 4096 and not (tmp_path / "cache").exists()


def test_a_warm_up_longer_than_training_is_refused():
    """configs/relu_l1.yaml once warmed up for 500 steps of a 50-step run: the SAE never trained and stayed dense."""
    with pytest.raises(SaeAmortError, match="never leave warm-up"):
        TrainConfig(arch="standard", tokens=204_800, batch_size=4096, lr_warm_up_steps=500)
    TrainConfig(arch="standard", tokens=204_800, batch_size=4096, lr_warm_up_steps=49)


def test_training_on_a_store_passes_over_it_several_times(tmp_path):
    """`train --activations` promised that --steps may pass over the store several times, but the config refused any
    run longer than one pass; the held-out rows (after --tokens) must stay unseen however many passes."""
    from saelens_amort.world import WorldConfig, build_world

    world = build_world(WorldConfig(d=16, n_features=32, n_tokens=6144, mean_l0=2.0, n_parents=2, n_groups=2,
                                    shard_tokens=2048), tmp_path / "world")
    cfg = TrainConfig(arch="topk", activations=str(world.path), tokens=2048, steps=12, batch_size=512, expansion=2,
                      k=2, lr=3e-3)
    summary = run_train(cfg, tmp_path / "run", progress=False)
    assert summary["steps"] == 12 and len(_losses(tmp_path / "run")) == 12  # three passes over 2048 rows
    assert summary["held_out_rows"] == 4096
    with pytest.raises(SaeAmortError, match="need 3072 training tokens"):
        TrainConfig(arch="topk", tokens=1024, steps=6, batch_size=512)
