"""Latent edits as hooks on the real toy model and SAEs: error term kept (no-op edits change nothing), edits act,
no hook survives (also when the body raises), patching side by side, and the bad inputs."""

import warnings

import pytest
import torch
from helpers import tiny_model, tiny_tokenizer, toy_model, toy_tokens

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


def test_patch_lambda_is_calibrated_on_the_generation_tokens_without_bos(world):
    from saelens_amort.inference import calibrate_lambda
    from saelens_amort.interventions.patching import calibrate_on_prompts, prompt_activations, prompt_tokens

    model, sae, _ = world
    hook = sae.cfg.metadata.hook_name
    prompts = ["the match ended", "a quiet river"]
    with_bos = [prompt_tokens(model, p, 6) for p in prompts]
    assert all(int(t[0, 0]) == model.tokenizer.bos_token_id for t in with_bos)
    acts = torch.cat([model.run_with_cache(t, names_filter=hook)[1][hook][0, 1:] for t in with_bos])
    expected = calibrate_lambda(acts, sae, "semi", strict=False).lam
    default = model.cfg.default_prepend_bos
    model.cfg.default_prepend_bos = False  # a model whose tokens carry no BOS unless asked for one
    try:
        assert calibrate_on_prompts(model, sae, hook, prompts, "semi", 6) == pytest.approx(expected, rel=1e-6)
        bare = model.to_tokens(prompts[0])
        assert int(bare[0, 0]) != model.tokenizer.bos_token_id
        assert prompt_activations(model, hook, bare).shape[0] == bare.shape[1]  # a first real token is kept
    finally:
        model.cfg.default_prepend_bos = default
    assert calibrate_on_prompts(model, sae, hook, prompts, "amortized", 6) is None


def test_patch_warns_about_latents_that_never_fire_on_the_prompt(world):
    model, sae, _ = world
    hook = sae.cfg.metadata.hook_name
    tokens = model.to_tokens("the match ended", prepend_bos=True)
    codes = sae.encode(model.run_with_cache(tokens, names_filter=hook)[1][hook])[0, 1:]
    fired = codes.gt(0).any(0)
    live, silent = int(fired.nonzero()[0]), int((~fired).nonzero()[0])
    with pytest.warns(UserWarning, match=rf"latent\(s\) {silent} never fire on the prompt 'the match ended'"):
        patch_generate(model, sae, LatentEdit(ablate=(silent, live)), ["the match ended"], max_new_tokens=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patch_generate(model, sae, LatentEdit(scale={live: 2.0}), ["the match ended"], max_new_tokens=2)
    assert not [w for w in caught if "never fire" in str(w.message)]


def test_patch_warns_about_empty_continuations(tmp_path):
    from sae_lens import StandardSAE, StandardSAEConfig
    from tokenizers import AddedToken

    tokenizer = tiny_tokenizer(tmp_path)
    tokenizer.add_tokens([AddedToken("\n", normalized=False)])
    model = tiny_model(tokenizer)
    with torch.no_grad():
        model.unembed.b_U[tokenizer.convert_tokens_to_ids("\n")] = 1e3  # always generates newlines: no text
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=64))
    sae.cfg.metadata.hook_name = "blocks.0.hook_resid_post"
    with pytest.warns(UserWarning, match="the original continuation of 'the match ended' is empty"):
        rows = patch_generate(model, sae, LatentEdit(scale={3: 1.0}), ["the match ended"], max_new_tokens=3)
    assert rows[0].original.strip() == ""


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
    with pytest.raises(SaeAmortError, match="out of range .*d_sae=1024"):
        patch_generate(model, sae, LatentEdit(ablate=(5000,)), ["the match ended"])
    assert active_hooks(model) == 0
