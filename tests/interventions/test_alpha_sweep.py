"""Feature α-sweep on the toy model: α = 1 changes nothing, ablation changes CE, several layers in one run, the OOM
retry halves the batch, and bad feature files are one-line errors."""

import pandas as pd
import pytest
import torch
from helpers import assert_user_error, saeamort, toy_model, toy_tokens
from sae_lens import StandardSAE, StandardSAEConfig

from saelens_amort import SaeAmortError
from saelens_amort.interventions.alpha_sweep import _batched, sweep_feature
from saelens_amort.feature_lists import read_features
from saelens_amort.saes import load_sae

HOOK = "blocks.2.hook_resid_post"


@pytest.fixture(scope="module")
def world():
    model, sae, tokens = toy_model(), load_sae("toy/topk"), toy_tokens(6, 32)
    z = sae.encode(model.run_with_cache(tokens, names_filter=HOOK)[1][HOOK])[:, 1:]
    busiest = int((z > 0).flatten(0, 1).sum(0).argmax())
    return model, sae, tokens, busiest


def test_alpha_one_is_a_noop_and_ablation_acts(world):
    model, sae, tokens, j = world
    rows = {r["alpha"]: r for r in sweep_feature(model, sae, HOOK, tokens, j, (0.0, 1.0, 4.0), percentile=0)}
    assert rows[1.0]["delta_ce"] == pytest.approx(0.0, abs=1e-6) and rows[1.0]["kl"] == pytest.approx(0.0, abs=1e-7)
    assert rows[0.0]["kl"] > 1e-5 and rows[4.0]["kl"] > 1e-6 and rows[0.0]["live_positions"] > 0
    assert len(rows[4.0]["top_logit_tokens"].split(" | ")) == 5
    narrow = sweep_feature(model, sae, HOOK, tokens, j, (0.0,), percentile=90)[0]
    assert narrow["live_positions"] < rows[0.0]["live_positions"]
    semi = {r["alpha"]: r for r in sweep_feature(model, sae, HOOK, tokens, j, (1.0, 0.0), percentile=0, mode="semi",
                                                lam=3.0)}
    assert semi[1.0]["kl"] == pytest.approx(0.0, abs=1e-7) and semi[0.0]["kl"] > 0


def test_padding_is_neither_scored_nor_live_nor_in_the_threshold(world):
    from saelens_amort.interventions import LatentEdit, latent_edit
    from saelens_amort.metrics.next_token import kl_per_position

    model, sae, tokens, j = world
    lengths = torch.tensor([32, 12, 20, 9, 32, 16])
    padded = tokens.clone()
    padded[torch.arange(32)[None, :] >= lengths[:, None]] = model.tokenizer.pad_token_id
    # reference: every row run alone at its real length (no padding anywhere)
    rows = [padded[i:i + 1, :n] for i, n in enumerate(lengths.tolist())]
    z = torch.cat([sae.encode(model.run_with_cache(r, names_filter=HOOK)[1][HOOK])[0, 1:, j] for r in rows])
    threshold = float(torch.quantile(z[z > 0], 0.9))
    ce_clean, ce_edit, kls = [], [], []
    for r in rows:
        lp = model(r).log_softmax(-1)[0, :-1]
        with latent_edit(model, sae, LatentEdit(scale={j: 0.0}, live_threshold={j: 0.0})):
            lp_edit = model(r).log_softmax(-1)[0, :-1]
        ce_clean.append(-lp.gather(-1, r[0, 1:, None]).squeeze(-1))
        ce_edit.append(-lp_edit.gather(-1, r[0, 1:, None]).squeeze(-1))
        kls.append(kl_per_position(lp, lp_edit))
    delta_ce = float(torch.cat(ce_edit).mean() - torch.cat(ce_clean).mean())
    kl = float(torch.cat(kls).mean())
    row = sweep_feature(model, sae, HOOK, padded, j, (0.0,), percentile=0, lengths=lengths)[0]
    assert row["delta_ce"] == pytest.approx(delta_ce, rel=1e-3, abs=1e-6)
    assert row["kl"] == pytest.approx(kl, rel=1e-3, abs=1e-7)
    assert row["live_positions"] == int((z > 0).sum())
    narrow = sweep_feature(model, sae, HOOK, padded, j, (0.0,), percentile=90, lengths=lengths)[0]
    assert narrow["threshold"] == pytest.approx(threshold, rel=1e-5)
    with pytest.raises(SaeAmortError, match="lengths must give"):
        sweep_feature(model, sae, HOOK, padded, j, (0.0,), lengths=torch.tensor([33, 2, 2, 2, 2, 2]))


def test_oom_retry_halves_the_batch():
    seen = []

    def fn(t):
        seen.append(t.shape[0])
        if t.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("simulated")
        return t * 2

    out = _batched(fn, torch.arange(10).reshape(10, 1), 8)
    assert out.flatten().tolist() == [2 * i for i in range(10)] and seen[:3] == [8, 4, 2]


def test_two_layers_in_one_run(tmp_path):
    torch.manual_seed(0)
    sae1 = StandardSAE(StandardSAEConfig(d_in=128, d_sae=64))
    with torch.no_grad():
        sae1.b_enc.fill_(0.5)
    sae1.cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    sae1.save_model(str(tmp_path / "l1"))
    (tmp_path / "f.csv").write_text("layer,feature,label\n1,3,a\n2,399,b\n2,5,c\n")
    out = tmp_path / "out"
    proc = saeamort("alpha-sweep", "--features", str(tmp_path / "f.csv"), "--sae", f"1={tmp_path / 'l1'}",
                    "--sae", "2=toy/topk", "--alphas", "0,1,2", "--sequences", "6", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    summary = pd.read_csv(out / "per_layer_summary.csv")
    assert sorted(summary["layer"].unique()) == [1, 2]
    assert (summary[summary["alpha"] == 1.0]["delta_ce"].abs() < 1e-5).all()
    per = pd.read_csv(out / "per_feature_metrics.csv")
    assert {"delta_ce", "kl", "top_logit_tokens"} <= set(per.columns)
    assert {p.name for p in out.iterdir()} >= {"per_feature_metrics.csv", "per_layer_summary.csv", "report.md",
                                               "report.html", "snippets.json"}


@pytest.mark.slow
def test_bad_feature_files(tmp_path):
    (tmp_path / "bad.csv").write_text("layer,latent\n2,3\n")
    with pytest.raises(SaeAmortError, match="lacks column"):
        read_features(tmp_path / "bad.csv")
    (tmp_path / "big.csv").write_text("layer,feature\n2,5000\n")
    assert_user_error(saeamort("alpha-sweep", "--features", str(tmp_path / "big.csv"), "--out",
                               str(tmp_path / "o1")), "out of range")
    (tmp_path / "l5.csv").write_text("layer,feature\n5,1\n")
    assert_user_error(saeamort("alpha-sweep", "--features", str(tmp_path / "l5.csv"), "--out",
                               str(tmp_path / "o2")), "no SAE for them")
    assert_user_error(saeamort("alpha-sweep", "--features", str(tmp_path / "bad.csv")), "lacks column")
    assert_user_error(saeamort("alpha-sweep", "--features", str(tmp_path / "nope.csv")), "does not exist")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
