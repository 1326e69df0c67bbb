"""GIS on the toy world: the KL calibration hits its target in a bounded number of passes, α = 0 and an inactive
hook change nothing, an unreachable target names the best reached, and the command writes side-by-side outputs."""

import json

import pandas as pd
import pytest
import torch
from helpers import assert_user_error, saeamort, toy_model, toy_tokens

from saelens_amort import SaeAmortError
from saelens_amort.interventions import active_hooks
from saelens_amort.interventions.gis import calibrate_alpha, gis_hook, mean_kl
from saelens_amort.saes import load_sae

HOOK = "blocks.2.hook_resid_post"


@pytest.fixture(scope="module")
def world():
    return toy_model(), load_sae("toy/topk"), toy_tokens(6, 32)


@pytest.mark.parametrize("kind", ["steer", "ablate"])
def test_calibration_hits_the_target(world, kind):
    model, sae, tokens = world
    mask = torch.ones_like(tokens, dtype=torch.bool)
    kw = {"sae": sae, "hook_name": HOOK, "latents": [399, 987, 568], "kind": kind}
    cal = calibrate_alpha(model, tokens, mask, 0.2, **kw)
    assert cal.reached and abs(cal.kl - 0.2) <= 0.05 * 0.2 and cal.passes <= 24
    clean_lp = model(tokens).float().log_softmax(-1)
    kw = {**kw, "rms_ratio": cal.rms_ratio, "lam": cal.lam}
    assert mean_kl(model, tokens, clean_lp, mask, alpha=cal.alpha, **kw) == pytest.approx(cal.kl, rel=1e-4)
    assert mean_kl(model, tokens, clean_lp, mask, alpha=0.0, **kw) == pytest.approx(0.0, abs=1e-6)
    # generation runs one sequence per pass: the calibrated α must give the calibrated KL there too
    one_at_a_time = [mean_kl(model, tokens[i:i + 1], clean_lp[i:i + 1], mask[i:i + 1], alpha=cal.alpha, **kw)
                     for i in range(tokens.shape[0])]
    assert sum(one_at_a_time) / len(one_at_a_time) == pytest.approx(cal.kl, rel=1e-3)
    assert active_hooks(model) == 0


def test_ablate_at_one_over_the_ratio_is_exact_ablation_on_any_pass(world):
    from saelens_amort.interventions import LatentEdit, latent_edit
    from saelens_amort.interventions.gis import rms_ratio

    model, sae, tokens = world
    latents = [399, 987, 568]
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[:, -8:] = False  # padding: not part of the scale
    ratio, _ = rms_ratio(model, tokens, mask, sae, HOOK, latents, kind="ablate")
    one = tokens[:1, :20]  # a generation-like pass: another batch, another length
    with latent_edit(model, sae, LatentEdit(ablate=tuple(latents))):
        ablated = model(one)
    with gis_hook(model, sae, HOOK, latents, 1.0 / ratio, rms_ratio=ratio, kind="ablate"):
        torch.testing.assert_close(model(one), ablated, atol=1e-4, rtol=1e-4)


def test_unreachable_target_names_the_best(world):
    model, sae, tokens = world
    mask = torch.ones_like(tokens, dtype=torch.bool)
    with pytest.raises(SaeAmortError, match="best reached was KL .* at α"):
        calibrate_alpha(model, tokens, mask, 5.0, sae=sae, hook_name=HOOK, latents=[399], max_passes=3)
    with pytest.raises(SaeAmortError, match="empty"):
        with gis_hook(model, sae, HOOK, [], 1.0, rms_ratio=1.0):
            pass
    assert active_hooks(model) == 0


@pytest.mark.slow
def test_gis_command(tmp_path):
    lat = tmp_path / "l.json"
    lat.write_text(json.dumps({"latents": [399, 987, 568, 176, 369], "class_id": 1}))
    out = tmp_path / "gis"
    proc = saeamort("gis", "--latents-file", str(lat), "--kl", "0.5", "--max-new-tokens", "8", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(out / "gis.csv")
    assert len(df) == 8 and set(df["decoding"]) == {"greedy", "sampled"}
    assert (df["intervened"] != df["clean"]).any() and df["class_shift"].notna().all()
    cal = json.loads((out / "gis.json").read_text())["calibration"][0]
    assert cal["reached"] and abs(cal["kl"] - 0.5) <= 0.025
    bad = saeamort("gis", "--latents", "5000", "--out", str(tmp_path / "x"))
    assert_user_error(bad, "out of range")
    assert len([ln for ln in bad.stderr.splitlines() if ln.strip()]) == 1, bad.stderr  # refused before collecting
    bad = saeamort("tpp", "--top-m", "5,2000", "--out", str(tmp_path / "t"))
    assert_user_error(bad, "--top-m 2000 exceeds d_sae=1024")
    assert len([ln for ln in bad.stderr.splitlines() if ln.strip()]) == 1, bad.stderr
    assert_user_error(saeamort("gis", "--latents", "1", "--class-id", "9", "--out", str(tmp_path / "y")),
                      "class id 9")
    assert_user_error(saeamort("gis", "--latents", "1", "--kl", "0", "--out", str(tmp_path / "z")), "positive")
