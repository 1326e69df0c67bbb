"""Interpretability views on the toy world: top contexts are the true maxima with their own tokens, frequencies
match a direct count, the report renders in Chromium, and cross-domain SAEs generalise worse off-domain."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import assert_user_error, chromium_probe, saeamort

from saelens_amort import SaeAmortError
from saelens_amort.runners.interpret import run_interpret
from saelens_amort.runners.tpp import prepare
from saelens_amort.runners.tpp_config import TppConfig
from saelens_amort.views.contexts import latent_views, write_views


@pytest.fixture(scope="module")
def world():
    model, sae, _, store = prepare(TppConfig(model="toy", tokens=6000, modes=("amortized",)))
    return model, sae, store


def test_top_contexts_are_the_maxima(world):
    model, sae, store = world
    views = latent_views(store, sae, model.tokenizer, n_latents=3, top_n=4, window=5, batch_size=1000)
    batch = store.load()
    with torch.no_grad():
        z = sae.encode(batch.acts.float())
    freq = (z > 0).float().mean(0).numpy()
    np.testing.assert_allclose(views.frequency, freq, atol=1e-9)
    for j in views.latents:
        acts = [c["activation"] for c in views.contexts[j]]
        assert acts == sorted(acts, reverse=True)
        np.testing.assert_allclose(acts, z[:, j].topk(len(acts)).values.numpy(), rtol=1e-5)
        for c in views.contexts[j]:
            assert c["tokens"][-1].strip() == model.tokenizer.decode([int(batch.token_ids[c["row"]])]).strip()
            assert 1 <= len(c["tokens"]) <= 6


def test_views_outputs_render(world, tmp_path):
    model, sae, store = world
    views = latent_views(store, sae, model.tokenizer, latents=[1, 2], top_n=3)
    write_views(views, tmp_path, "t", {}, {"latents": [1, 2]})
    data = json.loads((tmp_path / "contexts.json").read_text())
    assert set(data["latents"]) == {"1", "2"} and data["dead"] + data["dense"] <= sae.cfg.d_sae
    probe = chromium_probe(tmp_path / "report.html", tmp_path)
    assert probe["errors"] == [] and len([p for p in probe["plots"] if p["traces"]]) == 3  # density + 2 latents
    with pytest.raises(SaeAmortError, match="out of range"):
        latent_views(store, sae, model.tokenizer, latents=[5000])


def test_run_interpret_writes_the_views_and_records_the_device_it_used(tmp_path):
    """The runner behind `saeamort interpret`, with a λ-mode: the chosen latents' contexts, λ calibrated, and a run
    record naming the resolved device (so rerunning with --device auto on the same machine resumes, not refuses)."""
    out = tmp_path / "views"
    views = run_interpret(TppConfig(tokens=6000, modes=("semi",), device="auto"), out, latents=[1, 2], top_n=3)
    data = json.loads((out / "contexts.json").read_text())
    assert set(data["latents"]) == {"1", "2"} and data["mode"] == "semi" and data["lam"] > 0
    assert views.lam == data["lam"]
    record = json.loads((out / "run.json").read_text())
    assert record["command"] == "interpret" and record["config"]["device"] == "cpu"
    assert record["config"]["latents"] == [1, 2]


@pytest.mark.slow
def test_cross_domain(tmp_path):
    out = tmp_path / "xd"
    proc = saeamort("cross-domain", "--tokens", "30720", "--batch-size", "512", "--expansion", "4", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(out / "cross_domain.csv")
    assert len(df) == 4
    same = df[df["trained_on"].str[0] == df["evaluated_on"].str[0]]
    cross = df[df["trained_on"].str[0] != df["evaluated_on"].str[0]]
    assert cross["nmse"].min() > same["nmse"].max() and (cross["nmse_degradation"] > 0).all()
    sel = pd.read_csv(out / "selectivity.csv")
    assert set(sel["sae"]) == {"A", "B"} and len(sel) == 2 * 512
    assert_user_error(saeamort("cross-domain", "--domain-b", "toy:news", "--out", str(tmp_path / "x")), "must differ")
    assert_user_error(saeamort("interpret", "--latents", "1,x", "--out", str(tmp_path / "y")), "comma-separated")
