"""Spliced CE / KL on the toy model with a toy SAE: exact with the error term, sane without, no hook survives."""

import pytest
from helpers import toy_model, toy_tokens, torch_threads

import saelens_amort
from saelens_amort.errors import SaeAmortError
from saelens_amort.metrics import SpliceResult, make_metric, splice_reference, spliced_metrics

HOOK = "blocks.2.hook_resid_post"


@pytest.fixture(scope="module")
def world():
    with torch_threads(1):
        yield toy_model(), saelens_amort.load_sae("toy/topk"), toy_tokens(6, 40)


def _no_hooks(model):
    return all(not hp.fwd_hooks and not hp._forward_hooks for hp in model.hook_dict.values())


def test_amortized_with_error_term_is_the_clean_model(world):
    model, sae, tokens = world
    r = spliced_metrics(model, sae, "amortized", tokens, HOOK, lam=None, keep_error=True)
    assert abs(r.ce_spliced - r.ce_clean) < 1e-5
    assert r.kl < 1e-6
    assert r.n_tokens == tokens.shape[0] * (tokens.shape[1] - 1) - tokens.shape[0]  # BOS's prediction left out
    assert _no_hooks(model)


def test_amortized_splice_recovers_most_of_the_loss(world):
    model, sae, tokens = world
    r = spliced_metrics(model, sae, "amortized", tokens, HOOK, lam=None, keep_error=False)
    assert r.ce_zero > r.ce_clean
    assert 0.5 < r.ce_recovered <= 1
    assert r.kl > 0 and r.kl_zero > r.kl
    assert _no_hooks(model)


def test_other_modes_share_a_reference(world):
    model, sae, tokens = world
    ref = splice_reference(model, tokens, HOOK)
    semi = spliced_metrics(model, sae, "semi", tokens, HOOK, lam=3.0, keep_error=False, reference=ref, steps=5)
    assert semi.lam == 3.0 and semi.ce_clean == ref.ce_clean and semi.ce_zero == ref.ce_zero
    assert semi.ce_recovered is not None and semi.ce_recovered > 0
    kept = spliced_metrics(model, sae, "semi", tokens, HOOK, lam=3.0, keep_error=True, reference=ref, steps=5)
    assert kept.keep_error and 0 < kept.kl < ref.kl_zero
    assert _no_hooks(model)


def test_no_hook_survives_an_exception(world):
    model, sae, tokens = world
    with pytest.raises(SaeAmortError, match="steps"):
        spliced_metrics(model, sae, "unamortized", tokens, HOOK, lam=1.0, keep_error=False, steps=-1)
    assert _no_hooks(model)
    with pytest.raises(SaeAmortError, match="no hook"):
        spliced_metrics(model, sae, "amortized", tokens, "blocks.9.hook_resid_post", lam=None, keep_error=False)
    assert _no_hooks(model)


def test_splice_metric_accumulates_token_weighted(world):
    model, sae, tokens = world
    parts = [spliced_metrics(model, sae, "amortized", t, HOOK, lam=None, keep_error=False) for t in tokens.split(3)]
    whole = spliced_metrics(model, sae, "amortized", tokens, HOOK, lam=None, keep_error=False)
    a, b = make_metric("splice"), make_metric("splice")
    a.update(parts[0])
    b.update(parts[1])
    out = a.merge(b).compute()
    assert out["ce_spliced"] == pytest.approx(whole.ce_spliced, rel=1e-5)
    assert out["ce_recovered"] == pytest.approx(whole.ce_recovered, rel=1e-4)
    assert out["kl"] == pytest.approx(whole.kl, rel=1e-4)
    with pytest.raises(SaeAmortError, match="one splice accumulator"):
        a.update(parts[0]._replace(keep_error=True))
    assert isinstance(whole, SpliceResult)
