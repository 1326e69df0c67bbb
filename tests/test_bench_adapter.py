"""SAEBench adapter against SAEBench's real BaseSAE (sae-bench installed without dependencies): the contract, unit-norm
decoder, SAEBench's own `test_sae` assertions on the toy model, and each mode's codes."""

import pytest
import torch
from helpers import toy_activations, toy_model, toy_tokens

from saelens_amort import SaeAmortError, infer
from saelens_amort.bench import HAVE_SAEBENCH, as_saebench_sae
from saelens_amort.saes import load_sae

pytestmark = pytest.mark.skipif(not HAVE_SAEBENCH, reason="pip install --no-deps sae-bench==0.6.0")


def test_contract_and_amortized_codes():
    from sae_bench.custom_saes.base_sae import BaseSAE

    sae = load_sae("toy/topk")
    ad = as_saebench_sae(sae, "amortized")
    assert isinstance(ad, BaseSAE) and ad.check_decoder_norms()
    assert ad.W_enc.shape == (128, 1024) and ad.W_dec.shape == (1024, 128) and ad.b_enc.shape == (1024,)
    assert (ad.cfg.d_in, ad.cfg.d_sae, ad.cfg.hook_name, ad.cfg.hook_layer) == (128, 1024, "blocks.2.hook_resid_post", 2)
    x = toy_activations()[:64]
    with torch.no_grad():
        z = sae.encode(x)
        torch.testing.assert_close(ad.encode(x), z * sae.W_dec.norm(dim=1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ad(x), sae.decode(z), atol=1e-4, rtol=1e-4)


def test_saebench_test_sae_assertions_on_the_toy_model():
    model, sae = toy_model(), load_sae("toy/topk")
    ad = as_saebench_sae(sae, "semi", lam=4.0)
    tokens = toy_tokens(2, 24)
    _, cache = model.run_with_cache(tokens, names_filter=[ad.cfg.hook_name], stop_at_layer=ad.cfg.hook_layer + 1)
    acts = cache[ad.cfg.hook_name]
    decoded = ad.decode(ad.encode(acts))  # [B, L, F] in, as SAEBench passes it
    assert torch.allclose(ad(acts.reshape(-1, acts.shape[-1])).reshape(acts.shape), decoded, atol=1e-5)
    assert (ad.encode(acts)[:, 1:] > 0).float().sum(-1).mean() > 0


def test_modes_and_bad_input():
    sae = load_sae("toy/standard")
    x = toy_activations()[:128]
    ad = as_saebench_sae(sae, "unamortized", calib_x=x)
    star = infer(x, sae, "unamortized", lam=ad.lam)
    torch.testing.assert_close(ad.encode(x), star.codes * sae.W_dec.norm(dim=1), atol=1e-5, rtol=1e-4)
    with pytest.raises(SaeAmortError, match="needs lam, or calib_x"):
        as_saebench_sae(sae, "semi")
