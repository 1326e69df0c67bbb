"""Spliced CE / KL a chunk of sequences at a time, and with codes given instead of solved."""

import pytest
import torch
from helpers import toy_model, toy_tokens, torch_threads

import saelens_amort
from saelens_amort.errors import SaeAmortError
from saelens_amort.inference.sparse_codes import to_csr
from saelens_amort.metrics.splice import SpliceSetting, splice_reference, spliced_in_chunks, spliced_metrics

HOOK = "blocks.2.hook_resid_post"
KEYS = ("ce_clean", "ce_spliced", "ce_zero", "ce_recovered", "kl", "kl_zero", "n_tokens")


@pytest.fixture(scope="module")
def world():
    with torch_threads(1):
        tokens = toy_tokens(6, 40)
        lengths = torch.tensor([40, 23, 31, 12, 40, 27])
        padded = tokens.clone()
        padded[torch.arange(40) >= lengths[:, None]] = toy_model().tokenizer.eos_token_id
        yield toy_model(), saelens_amort.load_sae("toy/topk"), padded, lengths


def _replaced_acts(model, tokens, lengths):
    """The hook's clean activations at the replaced positions (real, not BOS), row-major."""
    replace = splice_reference(model, tokens, HOOK, lengths).replace
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    return cache[HOOK][replace]


def _batch_sizes_seen(model):
    seen = []

    def record(act, hook):
        seen.append(act.shape[0])

    return seen, record


def test_two_chunks_equal_one_chunk_and_never_run_all_sequences_at_once(world):
    model, sae, tokens, lengths = world
    settings = {("semi", keep): SpliceSetting("semi", keep, 3.0, {"steps": 5}) for keep in (False, True)}
    settings["amortized", False] = SpliceSetting("amortized", False)
    with torch_threads(1):
        whole = spliced_in_chunks(model, sae, tokens, HOOK, settings, max_positions=10_000, lengths=lengths)
        seen, record = _batch_sizes_seen(model)
        with model.hooks(fwd_hooks=[("blocks.3.hook_resid_post", record)]):  # the last block: every run passes it
            chunked = spliced_in_chunks(model, sae, tokens, HOOK, settings, max_positions=3 * 40 + 5,
                                        lengths=lengths)
        unchunked = spliced_metrics(model, sae, "semi", tokens, HOOK, lam=3.0, keep_error=True, lengths=lengths,
                                    steps=5)
    assert max(seen) == 3 and len(seen) == 2 * (2 + 3)  # 2 chunks × (clean, zero, 3 settings)
    for key in settings:
        a, b = whole[key].compute(), chunked[key].compute()
        for name in KEYS:
            assert b[name] == pytest.approx(a[name], rel=1e-5, abs=1e-6), (key, name)
    kept = chunked["semi", True].compute()
    assert kept["ce_spliced"] == pytest.approx(unchunked.ce_spliced, abs=1e-5)
    assert kept["kl"] == pytest.approx(unchunked.kl, abs=1e-6)
    assert kept["n_tokens"] == unchunked.n_tokens == int(lengths.sum()) - 2 * len(lengths)


@pytest.mark.parametrize("mode, options, tol", [("amortized", {}, 1e-6), ("unamortized", {"lam": 1.0}, 2e-4)])
def test_given_codes_equal_solved_ones(world, mode, options, tol):
    """Codes solved beforehand on the clean activations (as the eval's batch loop has them) splice like codes solved
    inside the hook: exactly for the encoder, to the solver's tolerance for the converged lasso (a second solve
    on the same rows differs only by float noise)."""
    model, sae, tokens, lengths = world
    with torch_threads(1):
        x = _replaced_acts(model, tokens, lengths)
        codes = saelens_amort.infer(x, sae, mode, **options).codes
        encoder = saelens_amort.infer(x, sae, "amortized").codes
        lam, cache = options.get("lam"), {}
        for keep in (False, True):
            solved = spliced_metrics(model, sae, mode, tokens, HOOK, lam=lam, keep_error=keep, lengths=lengths,
                                     cache=cache)
            given = spliced_metrics(model, sae, mode, tokens, HOOK, lam=lam, keep_error=keep, lengths=lengths,
                                    codes=to_csr(codes), encoder_codes=to_csr(encoder) if keep else None)
            assert given.ce_spliced == pytest.approx(solved.ce_spliced, abs=tol)
            assert given.kl == pytest.approx(solved.kl, abs=tol)
            assert given.n_tokens == solved.n_tokens
        chunked = spliced_in_chunks(model, sae, tokens, HOOK, {"given": SpliceSetting(mode, False, lam, codes=codes)},
                                    max_positions=80, lengths=lengths)["given"].compute()
        plain = spliced_metrics(model, sae, mode, tokens, HOOK, lam=lam, keep_error=False, lengths=lengths,
                                codes=codes)
    assert chunked["ce_spliced"] == pytest.approx(plain.ce_spliced, abs=1e-5)


def test_given_codes_must_cover_the_replaced_positions(world):
    model, sae, tokens, lengths = world
    n = int(lengths.sum()) - len(lengths)
    short = torch.zeros(n - 1, sae.cfg.d_sae)
    with pytest.raises(SaeAmortError, match=rf"hold {n - 1} rows but the tokens have {n} replaced positions"):
        spliced_metrics(model, sae, "amortized", tokens, HOOK, lam=None, keep_error=False, lengths=lengths,
                        codes=short)
    with pytest.raises(SaeAmortError, match="the given encoder codes of k hold"):
        spliced_in_chunks(model, sae, tokens, HOOK, {"k": SpliceSetting("amortized", True, encoder_codes=short)},
                          max_positions=64, lengths=lengths)
    with pytest.raises(SaeAmortError, match=r"\[replaced positions, d_sae=1024\]"):
        spliced_metrics(model, sae, "amortized", tokens, HOOK, lam=None, keep_error=False, lengths=lengths,
                        codes=torch.zeros(n, 7))


def test_error_term_is_the_encoders_also_for_refitted_encoder_codes(world):
    """keep_error adds back x − decode(encoder codes); refitted codes are not the encoder's, so the model is not
    the clean one (the shortcut 'amortized ⇒ error term cancels' must not apply to amortized+refit)."""
    model, sae, tokens, lengths = world
    with torch_threads(1):
        plain = spliced_metrics(model, sae, "amortized", tokens, HOOK, lam=None, keep_error=True, lengths=lengths)
        refit = spliced_metrics(model, sae, "amortized", tokens, HOOK, lam=None, keep_error=True, lengths=lengths,
                                refit=True)
        x = _replaced_acts(model, tokens, lengths)
        delta = (sae.decode(saelens_amort.infer(x, sae, "amortized", refit=True).codes)
                 - sae.decode(sae.encode(x)))

        ref = splice_reference(model, tokens, HOOK, lengths)

        def by_hand(act, hook):  # independent reference: x + decode(z_refit) − decode(z_encoder) at replaced positions
            out = act.clone()
            out[ref.replace] += delta
            return out

        with torch.no_grad(), model.hooks(fwd_hooks=[(HOOK, by_hand)]):
            logits = model(tokens)
    lp = logits[:, :-1].log_softmax(-1)
    ce = float(-lp.gather(-1, tokens[:, 1:, None]).squeeze(-1)[ref.scored].double().mean())
    assert plain.kl < 1e-6
    assert refit.kl > 1e-4
    assert refit.ce_spliced == pytest.approx(ce, abs=1e-4)
