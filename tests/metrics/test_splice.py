"""Spliced CE / KL on the toy model with a toy SAE: exact with the error term, sane without, no hook survives."""

import pytest
import torch
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


def _ragged(tokens, pad):
    """Rows cut to lengths 40, 23, 31, … and right-padded with `pad`; also their lengths."""
    lengths = torch.tensor([40, 23, 31, 12, 40, 27])[: tokens.shape[0]]
    padded = tokens.clone()
    padded[torch.arange(tokens.shape[1]) >= lengths[:, None]] = pad
    return padded, lengths


def _real_only_ce(model, tokens, lengths, hooks=()):
    """Independent reference: TransformerLens' per-token loss of each row run alone, unpadded, without the
    prediction made at BOS (position 0 is never spliced)."""
    losses = []
    with torch.no_grad(), model.hooks(fwd_hooks=list(hooks)):
        for row, n in zip(tokens, lengths.tolist()):
            losses.append(model(row[None, :n], return_type="loss", loss_per_token=True)[0, 1:])
    return float(torch.cat(losses).double().mean()), sum(len(loss) for loss in losses)


def test_padding_equal_to_bos_eos_is_not_scored(world):
    """pad = BOS = EOS (what TransformerLens sets when a tokenizer has no pad token); the toy rows hold real EOS
    tokens with that same id between documents, which must still count."""
    model, sae, tokens = world
    tok = model.tokenizer
    assert tok.bos_token_id == tok.eos_token_id
    padded, lengths = _ragged(tokens, tok.eos_token_id)
    assert any((row[1:n] == tok.eos_token_id).any() for row, n in zip(padded, lengths.tolist()))  # real EOS inside

    ref = splice_reference(model, padded, HOOK, lengths)
    ce_clean, n_real = _real_only_ce(model, padded, lengths)
    assert ref.n_tokens == n_real
    assert ref.ce_clean == pytest.approx(ce_clean, abs=1e-5)

    def zero_after_bos(act, hook):
        out = act.clone()
        out[:, 1:] = 0
        return out

    ce_zero, _ = _real_only_ce(model, padded, lengths, [(HOOK, zero_after_bos)])
    assert ref.ce_zero == pytest.approx(ce_zero, abs=1e-5)

    kept = spliced_metrics(model, sae, "amortized", padded, HOOK, lam=None, keep_error=True, lengths=lengths)
    assert kept.ce_spliced == pytest.approx(ce_clean, abs=1e-5) and kept.kl < 1e-6
    # a spliced row's scores do not depend on the padding after it: the padded batch equals its rows run alone
    whole = spliced_metrics(model, sae, "amortized", padded, HOOK, lam=None, keep_error=False, lengths=lengths)
    alone = make_metric("splice")
    for row, n in zip(padded, lengths.tolist()):
        alone.update(spliced_metrics(model, sae, "amortized", row[None, :n], HOOK, lam=None, keep_error=False))
    out = alone.compute()
    assert whole.n_tokens == n_real
    assert whole.ce_spliced == pytest.approx(out["ce_spliced"], abs=1e-5)
    assert whole.kl == pytest.approx(out["kl"], abs=1e-6)
    assert _no_hooks(model)


def test_bad_lengths_are_user_errors(world):
    model, _, tokens = world
    with pytest.raises(SaeAmortError, match="lengths must lie in"):
        splice_reference(model, tokens, HOOK, torch.full((tokens.shape[0],), tokens.shape[1] + 1))
    with pytest.raises(SaeAmortError, match="one integer per row"):
        splice_reference(model, tokens, HOOK, torch.tensor([3, 4]))


def test_ce_recovered_is_undefined_when_zero_ablation_does_not_raise_the_loss(world):
    model, sae, tokens = world
    ref = splice_reference(model, tokens, HOOK)
    flat = ref._replace(ce_zero=ref.ce_clean - 0.5)  # as if zeroing the hook lowered the loss
    r = spliced_metrics(model, sae, "amortized", tokens, HOOK, lam=None, keep_error=False, reference=flat)
    assert r.ce_recovered is None
    m = make_metric("splice")
    m.update(r)
    out = m.compute()
    assert out["ce_recovered"] is None
    assert m.skipped == {"ce_recovered": f"zero-ablation CE ({flat.ce_zero:.4g}) is not above clean CE "
                                         f"({flat.ce_clean:.4g})"}
    assert out["ce_spliced"] == pytest.approx(r.ce_spliced)


@pytest.mark.parametrize("layer", [1, 2, 3])  # block 3 is the toy's last: only ln_final and the unembedding run
def test_edited_runs_from_the_next_block_equal_whole_model_runs(world, layer):
    from saelens_amort.metrics.splice_forward import clean_logits, edited_logits, resume_layer

    model, _, tokens = world
    hook = f"blocks.{layer}.hook_resid_post"
    assert resume_layer(model, hook) == layer + 1
    logits, act = clean_logits(model, tokens, hook)
    torch.testing.assert_close(logits, model(tokens))
    assert act is not None and _no_hooks(model)

    def edit(a, hook):
        out = a.clone()
        out[:, 3:17] = a[:, 3:17].flip(-1)  # not a rescaling: a final LayerNorm would undo that
        return out

    whole = edited_logits(model, tokens, hook, edit, None)  # the whole model with the edit as a hook
    torch.testing.assert_close(edited_logits(model, tokens, hook, edit, act), whole, rtol=1e-5, atol=1e-5)
    assert (whole - logits).abs().max() > 1e-2  # the edit matters
    assert resume_layer(model, "blocks.2.hook_mlp_out") is None and resume_layer(model, "blocks.2.hook_resid_pre") is None


def test_splicing_at_a_residual_output_equals_splicing_at_the_next_input(world):
    """blocks.2.hook_resid_post (edited runs start at block 3) and blocks.3.hook_resid_pre (whole-model runs with a
    hook) carry the same activation, so every score agrees."""
    model, sae, tokens = world
    for keep in (False, True):
        a, b = (spliced_metrics(model, sae, "semi", tokens, hook, lam=3.0, keep_error=keep, steps=5)
                for hook in (HOOK, "blocks.3.hook_resid_pre"))
        for field in ("ce_clean", "ce_spliced", "ce_zero", "kl", "kl_zero"):
            assert getattr(a, field) == pytest.approx(getattr(b, field), rel=1e-5, abs=1e-6), (keep, field)
    assert _no_hooks(model)


def test_scores_in_place_equal_the_plain_ones():
    from saelens_amort.metrics.next_token import kl_per_position, next_token_scores

    gen = torch.Generator().manual_seed(0)
    logits, other = (torch.randn(3, 7, 50, generator=gen) * 4 for _ in range(2))
    tokens = torch.randint(0, 50, (3, 7), generator=gen)
    lp, ce = next_token_scores(logits, tokens)
    lp2, ce2 = next_token_scores(logits.clone(), tokens, in_place=True)
    torch.testing.assert_close(lp2, lp)
    torch.testing.assert_close(ce2, ce)
    torch.testing.assert_close(ce, torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:],
                                                                     reduction="none"))
    olp = other[:, :-1].log_softmax(-1)
    expected = (lp.exp() * (lp - olp)).sum(-1)  # KL(p ‖ q) = Σ p (log p − log q)
    torch.testing.assert_close(kl_per_position(lp, olp), expected, rtol=1e-5, atol=1e-6)
