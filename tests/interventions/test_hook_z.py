"""hook_z SAEs ([..., n_heads, d_head] activations, SAE-Lens' `reshape_activations="hook_z"`) end to end on the toy
model's blocks.0.attn.hook_z: every inference mode reads the flattened heads, and every intervention edits them and
puts them back in their shape, matching SAE-Lens' own hook_z encode/decode."""

import pytest
import torch
from helpers import toy_model, toy_tokens
from sae_lens import StandardSAE, StandardSAEConfig

from saelens_amort.inference import infer
from saelens_amort.interventions import LatentEdit, active_hooks, latent_edit, patch_generate
from saelens_amort.interventions.alpha_sweep import sweep_feature
from saelens_amort.interventions.gis import calibrate_alpha, gis_hook
from saelens_amort.saes import check_sae_fits, load_sae

HOOK = "blocks.0.attn.hook_z"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    model = toy_model()
    torch.manual_seed(0)
    written = StandardSAE(StandardSAEConfig(d_in=model.cfg.n_heads * model.cfg.d_head, d_sae=256,
                                            reshape_activations="hook_z"))
    with torch.no_grad():
        written.b_enc.fill_(-0.05)
    written.cfg.metadata.hook_name = HOOK
    folder = tmp_path_factory.mktemp("hook_z_sae")
    written.save_model(str(folder))
    sae = load_sae(str(folder))
    tokens = toy_tokens(3, 24)
    acts = model.run_with_cache(tokens, names_filter=HOOK)[1][HOOK]
    assert acts.ndim == 4  # [batch, pos, n_heads, d_head]
    return model, sae, tokens, acts


def test_every_mode_reads_flattened_heads(world):
    model, sae, _, acts = world
    assert check_sae_fits(sae, model, HOOK) == HOOK
    rows = acts.flatten(-2).flatten(0, 1)
    expected = sae.encode(acts).flatten(0, 1)  # SAE-Lens' own hook_z path
    torch.testing.assert_close(infer(rows, sae, "amortized").codes, expected, atol=1e-5, rtol=1e-5)
    for mode in ("semi", "unamortized"):
        res = infer(rows[:32], sae, mode, lam=0.05, steps=20)
        assert res.codes.shape == (32, 256) and torch.isfinite(res.codes).all()


def test_edits_match_sae_lens_decode_in_head_shape(world):
    model, sae, tokens, _ = world
    clean = model(tokens)
    with latent_edit(model, sae, LatentEdit(scale={3: 1.0})):
        torch.testing.assert_close(model(tokens), clean, atol=1e-4, rtol=1e-4)
    codes = sae.encode(model.run_with_cache(tokens, names_filter=HOOK)[1][HOOK])
    top = tuple(codes[:, 1:].flatten(0, 1).gt(0).sum(0).topk(5).indices.tolist())

    def reference(act, hook):  # x + decode(z with `top` zeroed) − decode(z), in SAE-Lens' [.., n_heads, d_head] form
        z = sae.encode(act[:, 1:])
        z_edit = z.clone()
        z_edit[..., list(top)] = 0
        out = act.clone()
        out[:, 1:] = act[:, 1:] + sae.decode(z_edit) - sae.decode(z)
        return out

    with model.hooks(fwd_hooks=[(HOOK, reference)]):
        expected = model(tokens)
    with latent_edit(model, sae, LatentEdit(ablate=top)):
        edited = model(tokens)
    assert (expected - clean).abs().max() > 1e-3
    torch.testing.assert_close(edited, expected, atol=1e-4, rtol=1e-4)
    rows = patch_generate(model, sae, LatentEdit(ablate=top), ["the match ended"], hook_name=HOOK, max_new_tokens=3)
    assert rows[0].original.strip()
    assert active_hooks(model) == 0


def test_gis_and_alpha_sweep_on_hook_z(world):
    model, sae, tokens, _ = world
    codes = sae.encode(model.run_with_cache(tokens, names_filter=HOOK)[1][HOOK])
    busiest = codes[:, 1:].flatten(0, 1).gt(0).sum(0).topk(3).indices.tolist()
    mask = torch.ones_like(tokens, dtype=torch.bool)
    cal = calibrate_alpha(model, tokens, mask, 0.05, sae=sae, hook_name=HOOK, latents=busiest, kind="ablate")
    assert cal.reached
    with gis_hook(model, sae, HOOK, busiest, cal.alpha, rms_ratio=cal.rms_ratio, kind="ablate"):
        assert model(tokens[:1]).shape == (1, tokens.shape[1], model.cfg.d_vocab)
    rows = {r["alpha"]: r for r in sweep_feature(model, sae, HOOK, tokens, busiest[0], (1.0, 0.0), percentile=0)}
    assert rows[1.0]["kl"] == pytest.approx(0.0, abs=1e-7) and rows[0.0]["live_positions"] > 0
    assert active_hooks(model) == 0
