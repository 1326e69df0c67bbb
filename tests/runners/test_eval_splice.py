"""The eval runner's spliced CE/KL: sequences rebuilt from the store with their real lengths, padding (here with
the BOS = EOS id, as TransformerLens pads tokenizers without a pad token) never scored; the batch loop's codes of
those rows spliced as they are, without a second solve."""

import pytest
import torch
from helpers import toy_model, torch_threads

import saelens_amort
from saelens_amort.activations import CollectConfig, collect_activations
from saelens_amort.activations.sources import ToySource
from saelens_amort.metrics import splice as splice_module
from saelens_amort.runners.eval import EvalConfig, evaluate_sae
from saelens_amort.runners.eval_inputs import splice_tokens

HOOK = "blocks.2.hook_resid_post"
CTX, N_SEQ = 24, 10


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with torch_threads(1):
        model = toy_model()
        store = collect_activations(model, ToySource(None, seed=5), CollectConfig(hook_name=HOOK, n_tokens=400,
                                    context_size=CTX), tmp_path_factory.mktemp("acts"), model_name="toy",
                                    progress=False)
        yield model, store


def expected_chunks(model, n):
    """Independent reference: the corpus tokenized document by document, cut into BOS + (CTX − 1)-token chunks."""
    bos, out = model.tokenizer.bos_token_id, []
    for text, _ in ToySource(None, seed=5).iter_documents():
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        out += [[bos] + ids[i:i + CTX - 1] for i in range(0, len(ids), CTX - 1)]
        if len(out) >= n:
            return out[:n]


def test_sequences_come_back_with_their_real_lengths(world):
    model, store = world
    bos = model.tokenizer.bos_token_id
    got = splice_tokens(store, N_SEQ, bos, pad=bos)
    chunks = expected_chunks(model, N_SEQ)
    assert got.lengths.tolist() == [len(c) for c in chunks]
    assert got.lengths.min() < got.tokens.shape[1] == CTX  # some rows are padded
    for row, n, chunk in zip(got.tokens, got.lengths.tolist(), chunks):
        assert row[:n].tolist() == chunk and (row[n:] == bos).all()
    # the non-BOS positions, row-major, are the store's first rows (the eval loop's codes of them are reused)
    assert got.store_rows == int(got.lengths.sum()) - N_SEQ
    assert store.load(got.store_rows).token_ids.tolist() == [t for c in chunks for t in c[1:]]


def test_eval_scores_real_tokens_only(world):
    model, store = world
    bos = model.tokenizer.bos_token_id
    seqs = splice_tokens(store, N_SEQ, bos, pad=bos)
    cfg = EvalConfig(model="toy", layer=2, saes=("toy/topk",), modes=("amortized",), metrics=("splice",),
                     tokens=store.n_tokens, calib_tokens=64, batch_size=512, splice_sequences=N_SEQ, context_size=CTX)
    with torch_threads(1):
        (row,), _ = evaluate_sae("toy/topk", saelens_amort.load_sae("toy/topk"), model, store, HOOK, cfg, seqs)
        with torch.no_grad():  # independent reference: each sequence alone, unpadded, without BOS's prediction
            ce = torch.cat([model(t[None, :n], return_type="loss", loss_per_token=True)[0, 1:]
                            for t, n in zip(seqs.tokens, seqs.lengths.tolist())])
    assert row["ce_clean"] == pytest.approx(float(ce.double().mean()), abs=1e-5)
    assert row["ce_spliced_keep_error"] == pytest.approx(row["ce_clean"], abs=1e-5)
    assert row["ce_zero"] > row["ce_clean"] and 0.5 < row["ce_recovered"] < 1.05
    assert row["skipped"] == ""


def test_eval_splices_the_loop_codes_without_solving_again(world, monkeypatch):
    """With every splice row among the evaluated rows (spread over 3 batches here) the splice solves nothing and
    matches a run whose --tokens stop short of the splice rows, which must solve them: exactly for the encoder modes,
    to the solver's tolerance for the converged lasso."""
    model, store = world
    bos = model.tokenizer.bos_token_id
    seqs = splice_tokens(store, N_SEQ, bos, pad=bos)
    assert 2 * 80 < seqs.store_rows < store.n_tokens
    solves, infer = [], splice_module.infer

    def counted(*args, **kwargs):
        solves.append(args[2])
        return infer(*args, **kwargs)

    monkeypatch.setattr(splice_module, "infer", counted)

    def run(tokens):
        cfg = EvalConfig(model="toy", layer=2, saes=("toy/topk",), modes=("amortized", "amortized+refit", "unamortized"),
                         metrics=("splice",), tokens=tokens, calib_tokens=64, batch_size=80, splice_sequences=N_SEQ,
                         context_size=CTX)
        with torch_threads(1):
            rows, _ = evaluate_sae("toy/topk", saelens_amort.load_sae("toy/topk"), model, store, HOOK, cfg, seqs)
        return {row["mode"]: row for row in rows}

    reused = run(store.n_tokens)
    assert solves == []
    solved = run(64)
    assert set(solves) == {"amortized", "unamortized"}
    for mode, row in reused.items():
        tol = 2e-4 if mode == "unamortized" else 1e-5
        assert row["lam"] == solved[mode]["lam"]
        for key in ("ce_spliced", "ce_spliced_keep_error", "kl", "kl_keep_error"):
            assert row[key] == pytest.approx(solved[mode][key], abs=tol), (mode, key)
        assert row["splice/n_tokens"] == solved[mode]["splice/n_tokens"] == seqs.store_rows - N_SEQ
    assert reused["amortized"]["kl_keep_error"] < 1e-6 < reused["amortized+refit"]["kl_keep_error"]
