"""dynamics: indexing checkpoints of both formats (step from metadata or name), loading every indexed checkpoint,
and the full command on toy-world checkpoints (results with a step column, index file, report curves)."""

import json

import pandas as pd
import pytest
import torch
from helpers import (
    assert_user_error,
    build_random_dictionary_learning_ae,
    import_dictionary_learning,
    saeamort,
    write_dictionary_learning_dir,
)


from saelens_amort import SaeAmortError
from saelens_amort.runners.dynamics import index_checkpoints, step_from_name
from saelens_amort.saes import load_sae


def _toy_checkpoints(root, noise_by_name: dict[str, float]):
    for name, noise in noise_by_name.items():
        sae = load_sae("toy/standard")
        gen = torch.Generator().manual_seed(len(name))
        with torch.no_grad():
            for p in sae.parameters():
                p.add_(noise * torch.randn(p.shape, generator=gen) * p.std())
        sae.save_model(str(root / name))
    return root


def test_step_from_name():
    assert [step_from_name(n) for n in ("step_500", "checkpoint-2000", "ae_1000", "final_8192", "x")] == [
        500, 2000, 1000, 8192, None]


def test_index_both_formats(tmp_path):
    if import_dictionary_learning() is None:
        pytest.skip("dictionary_learning not installed")
    _toy_checkpoints(tmp_path / "sl", {"step_20": 0.3, "4096": 0.0})
    torch.save({"n_training_steps": 30, "n_training_samples": 4096}, tmp_path / "sl" / "4096" / "trainer_state.pt")
    run = tmp_path / "dl" / "trainer_0"
    ae = build_random_dictionary_learning_ae("AutoEncoder", activation_dim=128, dict_size=256, seed=1)
    write_dictionary_learning_dir(run, ae, "AutoEncoder", trainer_extra={"steps": 50})
    (run / "checkpoints").mkdir()
    torch.save(ae.state_dict(), run / "checkpoints" / "ae_10.pt")
    index = index_checkpoints(tmp_path)
    assert list(index["step"]) == [10, 20, 31, 50]  # SAE-Lens saves before counting the step it is in
    assert list(index["step_source"]) == ["name", "name", "metadata", "metadata"]
    assert list(index["format"]) == ["dictionary_learning", "sae_lens", "sae_lens", "dictionary_learning"]
    x = torch.randn(8, 128)
    first = load_sae(index["path"][0])  # a checkpoints/ae_<step>.pt file, its config one folder up
    torch.testing.assert_close(first.encode(x), ae.encode(x), atol=1e-5, rtol=1e-5)
    assert all(load_sae(p).cfg.d_in == 128 for p in index["path"])


def test_index_refuses_empty_and_stepless(tmp_path):
    with pytest.raises(SaeAmortError, match="no SAE checkpoints"):
        index_checkpoints(tmp_path)
    _toy_checkpoints(tmp_path, {"latest": 0.0})
    with pytest.raises(SaeAmortError, match="cannot tell the training step"):
        index_checkpoints(tmp_path)


@pytest.mark.slow
def test_dynamics_command(tmp_path):
    ckpts = _toy_checkpoints(tmp_path / "ckpts", {"step_100": 0.5, "step_300": 0.0})
    out = tmp_path / "out"
    proc = saeamort("dynamics", "--checkpoints", str(ckpts), "--model", "toy", "--modes", "amortized,unamortized",
                    "--tokens", "1024", "--calib-tokens", "512", "--batch-size", "512", "--splice-sequences", "2",
                    "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    df = pd.read_parquet(out / "results.parquet")
    assert list(zip(df["step"], df["mode"])) == [(100, "amortized"), (100, "unamortized"), (300, "amortized"),
                                                 (300, "unamortized")]
    nmse = df[df["mode"] == "amortized"].set_index("step")["nmse"]
    assert nmse[300] < nmse[100]  # the noised early checkpoint reconstructs worse
    assert list(pd.read_parquet(out / "checkpoint_index.parquet")["step"]) == [100, 300]
    assert len(json.loads((out / "results.json").read_text())["checkpoint_index"]) == 2
    assert "vs training step" in (out / "report.html").read_text()
    assert_user_error(saeamort("dynamics", "--checkpoints", str(tmp_path / "nope"), "--model", "toy"),
                      "not a directory")
