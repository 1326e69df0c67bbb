"""TPP on the toy world: the ablation equals SAE-Lens' own decode difference, selected latents score well above
random ones, scores follow their definition, and bad inputs are one-line errors."""

import json

import numpy as np
import pytest
import torch
from helpers import assert_user_error, saeamort

from saelens_amort import SaeAmortError
from saelens_amort.interventions.tpp import (
    ClassProbes,
    latent_scores,
    pool_documents,
    removal,
    select_latents,
    tpp_matrix,
    tpp_score,
)
from saelens_amort.runners.tpp import prepare
from saelens_amort.runners.tpp_config import TppConfig


@pytest.fixture(scope="module")
def world():
    _, sae, _, store = prepare(TppConfig(model="toy", tokens=12_000, modes=("amortized",)))
    docs = pool_documents(store, sae, "amortized")
    return sae, store, docs, ClassProbes(docs)


def test_removal_is_the_decode_difference(world):
    sae, _, docs, _ = world
    latents = [3, 17, 400]
    z = docs.token_codes
    z_off = z.clone()
    z_off[:, latents] = 0
    per_token = sae.decode(z) - sae.decode(z_off)  # SAE-Lens' own decode
    n = docs.acts.shape[0]
    count = torch.zeros(n).index_add_(0, docs.doc_index, torch.ones(len(docs.doc_index)))
    expected = torch.zeros(n, per_token.shape[1]).index_add_(0, docs.doc_index, per_token) / count[:, None]
    torch.testing.assert_close(removal(docs, sae, latents), expected, atol=1e-4, rtol=1e-4)


def test_scores_follow_the_definition(world):
    sae, _, docs, probes = world
    c = probes.classes[1]
    train = ~docs.test
    z, y = docs.codes.numpy()[train], docs.labels[train] == c
    W = (sae.W_dec.detach().numpy())  # toy/topk: no input normalisation, so D_j = W_dec[j]
    expected = (W @ probes.direction(c)) * (z[y].mean(0) - z[~y].mean(0))
    np.testing.assert_allclose(latent_scores(docs, sae, probes, c), expected, rtol=1e-4, atol=1e-6)


def test_selected_latents_beat_random_ones(world):
    sae, _, docs, probes = world
    rng = np.random.default_rng(0)
    sel = {c: select_latents(docs, sae, probes, c, 30)[0] for c in probes.classes}
    rnd = {c: rng.choice(sae.cfg.d_sae, 30, replace=False).tolist() for c in probes.classes}
    selected, _ = tpp_score(tpp_matrix(docs, sae, probes, sel))
    random, _ = tpp_score(tpp_matrix(docs, sae, probes, rnd))
    assert selected > 0.05 and abs(random) < 0.02
    nothing, _ = tpp_score(tpp_matrix(docs, sae, probes, {c: [] for c in probes.classes}))
    assert nothing == 0.0  # ablating nothing changes nothing


@pytest.mark.slow
def test_bad_inputs(world, tmp_path):
    sae, _, docs, probes = world
    with pytest.raises(SaeAmortError, match="class id 9 is not among the labels"):
        select_latents(docs, sae, probes, 9, 5)
    with pytest.raises(SaeAmortError, match="--top-m must be in 1"):
        select_latents(docs, sae, probes, 0, 0)
    assert_user_error(saeamort("tpp", "--top-m", "5,x", "--out", str(tmp_path / "t")), "comma-separated integers")
    assert_user_error(saeamort("tpp", "--modes", "nope", "--out", str(tmp_path / "t")), "unknown mode")
    assert_user_error(saeamort("select-latents", "--class-id", "7", "--tokens", "12000", "--out",
                               str(tmp_path / "l.json")), "class id 7")
    assert not (tmp_path / "t").exists() and not (tmp_path / "l.json").exists()


@pytest.mark.slow
def test_cli_select_and_tpp(tmp_path):
    proc = saeamort("select-latents", "--class-id", "1", "--top-m", "4", "--mode", "semi", "--tokens", "12000",
                    "--out", str(tmp_path / "l.json"))
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((tmp_path / "l.json").read_text())
    assert rec["mode"] == "semi" and rec["lam"] > 0 and len(rec["latents"]) == 4 and rec["class_name"] == "sports"
    assert rec["scores"] == sorted(rec["scores"], reverse=True)
    proc = saeamort("tpp", "--top-m", "5,30", "--modes", "amortized,unamortized", "--tokens", "12000",
                    "--out", str(tmp_path / "tpp"))
    assert proc.returncode == 0, proc.stderr
    import pandas as pd

    df = pd.read_csv(tmp_path / "tpp" / "tpp.csv")
    assert list(zip(df["mode"], df["top_m"])) == [("amortized", 5), ("amortized", 30), ("unamortized", 5),
                                                  ("unamortized", 30)]
    assert (df[df["top_m"] == 30]["tpp"] > df[df["top_m"] == 30]["tpp_random"]).all()


def test_each_lambda_mode_gets_its_own_lambda(world, monkeypatch):
    # semi at the unamortized λ ran 15-19 % denser than the encoder; each λ-mode is calibrated as itself (as eval does)
    import pathlib

    import saelens_amort.interventions.tpp as tpp_module
    from saelens_amort.inference import calibrate_lambda
    from saelens_amort.runners.tpp import pooled

    sae, store, docs, _ = world
    cfg = TppConfig(model="toy", tokens=12_000, modes=("semi",))
    seen = {}
    monkeypatch.setattr(tpp_module, "pool_documents", lambda store, sae, mode, lam=None, **kw: seen.update(
        {mode: lam}) or docs)
    for mode in ("semi", "unamortized"):
        pooled(cfg, sae, store, mode)
    x = store.load(cfg.calib_tokens).acts
    assert seen["semi"] == pytest.approx(calibrate_lambda(x, sae, "semi", strict=False).lam, rel=1e-9)
    assert seen["unamortized"] == pytest.approx(calibrate_lambda(x, sae, "unamortized", strict=False).lam, rel=1e-9)
    assert seen["semi"] != pytest.approx(seen["unamortized"], rel=0.05)
    # and no command calibrates one mode's λ for another
    root = pathlib.Path(tpp_module.__file__).parents[1]
    for path in [*root.glob("runners/*.py"), *root.glob("interventions/*.py")]:
        assert 'calibrate_lambda(' not in path.read_text() or '"unamortized", strict' not in path.read_text(), path
