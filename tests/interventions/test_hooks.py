"""Latent edits as hooks on the real toy model and SAEs: error term kept (no-op edits change nothing), edits act,
no hook survives (also when the body raises), patching side by side, and the bad inputs."""

import pytest
import torch
from helpers import toy_model, toy_tokens

from saelens_amort import SaeAmortError
from saelens_amort.interventions import LatentEdit, active_hooks, latent_edit, parse_edit, patch_generate
from saelens_amort.saes import load_sae


@pytest.fixture(scope="module")
def world():
    return toy_model(), load_sae("toy/topk"), toy_tokens(4, 32)


def test_noop_edit_changes_nothing_and_ablation_acts(world):
    model, sae, tokens = world
    clean = model(tokens)
    for mode, lam in (("amortized", None), ("unamortized", 3.0)):
        with latent_edit(model, sae, LatentEdit(scale={5: 1.0}), mode=mode, lam=lam) as log:
            same = model(tokens)
        torch.testing.assert_close(same, clean, atol=2e-4, rtol=1e-4)
        assert log["passes"] == 1 and log["edited_positions"] == tokens.numel() - tokens.shape[0]  # BOS untouched
    codes = sae.encode(model.run_with_cache(tokens, names_filter=sae.cfg.metadata.hook_name)[1][
        sae.cfg.metadata.hook_name])
    top = codes.flatten(0, 1).gt(0).sum(0).topk(8).indices.tolist()
    with latent_edit(model, sae, LatentEdit(ablate=tuple(top))):
        ablated = model(tokens)
    assert (ablated - clean).abs().max() > 1e-2
    assert active_hooks(model) == 0


def test_lambda_is_calibrated_once_and_reused(world):
    from saelens_amort.inference import infer

    model, sae, tokens = world
    hook = sae.cfg.metadata.hook_name
    first, second = tokens[:1], tokens[1:3]
    acts = model.run_with_cache(first, names_filter=hook)[1][hook][:, 1:]
    lam = infer(acts.reshape(-1, acts.shape[-1]), sae, "semi").lam  # calibrated on the first pass's positions
    edit = LatentEdit(scale={5: 2.0})
    with latent_edit(model, sae, edit, mode="semi") as log:
        model(first)
        assert log["lam"] == pytest.approx(lam, rel=1e-6)
        edited = model(second)
        assert log["lam"] == pytest.approx(lam, rel=1e-6) and log["passes"] == 2
    with latent_edit(model, sae, edit, mode="semi", lam=lam):
        torch.testing.assert_close(model(second), edited, atol=1e-5, rtol=1e-5)


def test_no_hook_survives_an_exception(world):
    model, sae, tokens = world
    with pytest.raises(RuntimeError, match="boom"):
        with latent_edit(model, sae, LatentEdit(ablate=(1,))):
            model(tokens)
            assert active_hooks(model) == 1
            raise RuntimeError("boom")
    assert active_hooks(model) == 0


def test_live_threshold_scales_only_where_live():
    z = torch.tensor([[0.0, 0.5, 2.0], [1.0, 3.0, 0.0]])
    out = LatentEdit(scale={1: 2.0, 2: 0.0}, live_threshold={1: 1.0, 2: 1.0})(z)
    assert out.tolist() == [[0.0, 0.5, 0.0], [1.0, 6.0, 0.0]]
    assert LatentEdit(ablate=(0,), set={2: 7.0})(z).tolist() == [[0.0, 0.5, 7.0], [0.0, 3.0, 7.0]]


def test_patch_generate_side_by_side(world):
    model, sae, _ = world
    same = patch_generate(model, sae, LatentEdit(scale={3: 1.0}), ["the match ended"], max_new_tokens=6)[0]
    assert same.original == same.patched and same.original.strip()
    strong = LatentEdit(set={j: 50.0 for j in range(0, 1024, 64)})
    diff = patch_generate(model, sae, strong, ["the match ended"], max_new_tokens=6)[0]
    assert diff.original == same.original and diff.patched != diff.original
    with pytest.warns(UserWarning, match="truncated"):
        patch_generate(model, sae, LatentEdit(scale={3: 1.0}), ["word " * 500], max_new_tokens=4)


def test_bad_inputs(world):
    model, sae, _ = world
    with pytest.raises(SaeAmortError, match="out of range .*d_sae=1024"):
        with latent_edit(model, sae, LatentEdit(ablate=(1024,))):
            pass
    with pytest.raises(SaeAmortError, match="names no latent"):
        with latent_edit(model, sae, LatentEdit()):
            pass
    with pytest.raises(SaeAmortError, match="LATENT:VALUE"):
        parse_edit(amplify="56")
    with pytest.raises(SaeAmortError, match="comma-separated integers"):
        parse_edit(ablate="1,x")
    assert parse_edit("1,2", "3:2.5", "4:-1") == LatentEdit(ablate=(1, 2), scale={3: 2.5}, set={4: -1.0})
    with pytest.raises(SaeAmortError, match="at least one prompt"):
        patch_generate(model, sae, LatentEdit(ablate=(1,)), [])
    assert active_hooks(model) == 0
