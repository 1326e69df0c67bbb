"""k-sparse probes: ranking on train only, F1 on the held-out split, both label sources, skips, exact merge."""

import pytest
import torch

from saelens_amort.metrics import MetricBatch, make_metric
from saelens_amort.metrics.probes import correlations, SparseRows

N, D_SAE = 400, 8


def synthetic(seed=0, *, n=N, labels=True, doc_ids=True):
    """Latent 0 fires exactly on label-1 rows; latent 3 grows with ‖x‖; the rest is noise. Documents of 4 rows."""
    gen = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=gen) < 0.4).long()
    codes = torch.rand(n, D_SAE, generator=gen) * (torch.rand(n, D_SAE, generator=gen) < 0.3)
    codes[:, 0] = y * (1 + torch.rand(n, generator=gen))
    scale = 1 + 2 * torch.rand(n, generator=gen)
    x = torch.randn(n, 6, generator=gen)
    x = x / x.norm(dim=1, keepdim=True) * scale[:, None]
    codes[:, 3] = scale
    return MetricBatch(
        x=x, recon=x, codes=codes, labels=y if labels else None,
        doc_ids=torch.arange(n) // 4 if doc_ids else None,
    )


def test_label_latent_ranks_first_and_scores_f1_one():
    m = make_metric("probes", label_names=("neg", "pos"))
    m.update(synthetic())
    out = m.compute()
    assert out["real/f1@1"] == 1.0 and out["real/pos/f1@1"] == 1.0 and out["real/neg/f1@1"] == 1.0
    assert out["real/delta_f1"] == pytest.approx(out["real/f1@2"] - out["real/f1@1"])
    assert m.artifacts()["top_latents"]["real/pos"][0] == 0
    # the pseudo-label (‖x‖ above the train median) is carried by latent 3
    assert m.artifacts()["top_latents"]["pseudo"][0] == 3
    assert out["pseudo/f1@1"] > 0.95
    assert m.skipped == {}
    assert out["n_test"] == sum(1 for r in range(N) if (r // 4) % 5 == 0)
    assert out["n_train"] + out["n_test"] == N


def test_ranking_uses_the_train_split_only():
    batch = synthetic()
    test = batch.doc_ids % 5 == 0
    # Plant a latent that equals the label on the held-out rows only: it must not be chosen.
    codes = batch.codes.clone()
    codes[:, 5] = torch.where(test, batch.labels.float() * 5, torch.zeros(N))
    codes[:, 0] = torch.where(test, torch.zeros(N), codes[:, 0])
    m = make_metric("probes")
    m.update(batch._replace(codes=codes))
    m.compute()
    assert m.artifacts()["top_latents"]["real/class1"][0] != 5


def test_correlation_matches_numpy():
    batch = synthetic()
    y = batch.labels.double()
    rows = SparseRows.of(batch.codes)
    expected = torch.stack([torch.corrcoef(torch.stack([batch.codes[:, j].double(), y]))[0, 1]
                            for j in range(D_SAE)])
    torch.testing.assert_close(correlations(rows, y), expected, rtol=1e-9, atol=1e-12)


def test_no_labels_skips_the_real_source_with_a_reason():
    m = make_metric("probes")
    m.update(synthetic(labels=False))
    out = m.compute()
    assert out["real/f1@1"] is None and m.skipped["real/f1@1"] == "source has no labels"
    assert out["pseudo/f1@1"] is not None
    m = make_metric("probes")
    m.update(synthetic()._replace(labels=torch.full((N,), -1)))
    m.compute()
    assert m.skipped["real/delta_f1"] == "source has no labels"


def test_one_class_and_large_k_are_skipped():
    m = make_metric("probes", ks=(1, 2, 20))
    m.update(synthetic())
    out = m.compute()
    assert out["real/f1@20"] is None and m.skipped["real/class0/f1@20"] == "k=20 exceeds d_sae=8"
    m = make_metric("probes")
    m.update(synthetic()._replace(labels=torch.zeros(N, dtype=torch.long)))
    m.compute()
    assert m.skipped["real/f1@1"] == "fewer than 2 classes among the labelled rows"


@pytest.mark.parametrize("doc_ids", [True, False])
@pytest.mark.parametrize("caps", [{}, {"max_train_rows": 150, "max_test_rows": 30}])
def test_merge_equals_one_pass(doc_ids, caps):
    batch = synthetic(doc_ids=doc_ids)
    cut = 137
    first = MetricBatch(*(t[:cut] if isinstance(t, torch.Tensor) else t for t in batch))
    second = MetricBatch(*(t[cut:] if isinstance(t, torch.Tensor) else t for t in batch))
    whole = make_metric("probes", **caps)
    whole.update(first)
    whole.update(second)
    a = make_metric("probes", **caps)
    b = make_metric("probes", **caps, start_row=cut)
    a.update(first)
    b.update(second)
    assert a.merge(b).compute() == whole.compute()
    if caps:
        assert whole.compute()["n_train"] == 150 and whole.compute()["n_test"] == 30


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probe_is_class_balanced_standardised_and_scored_held_out(seed):
    """probe_f1 = F1 on the test rows of a class-balanced L2 logistic regression (C=1) fitted on the standardised
    train rows; the reference standardises and counts F1 by hand. Imbalanced, overlapping classes and features of
    very different scales, so an unbalanced or unscaled fit scores differently (checked)."""
    from sklearn.linear_model import LogisticRegression

    from saelens_amort.metrics.probes import Task, probe_f1

    gen = torch.Generator().manual_seed(seed)
    y = torch.rand(3000, generator=gen) < 0.1
    z = torch.stack([1 + y + torch.randn(3000, generator=gen), 0.01 * (1 + y + 2 * torch.randn(3000, generator=gen))],
                    dim=1).clamp_min(0)
    train, test = slice(0, 2000), slice(2000, None)
    task = Task("t", SparseRows.of(z[train]), y[train], SparseRows.of(z[test]), y[test])

    X, X_test = z[train].double().numpy(), z[test].double().numpy()
    mean, std = X.mean(0), X.std(0)

    def f1(**options):
        fit = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000, **options).fit((X - mean) / std, y[train].numpy())
        pred = torch.from_numpy(fit.predict((X_test - mean) / std))
        truth = y[test]
        tp, fp, fn = int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())
        return 2 * tp / (2 * tp + fp + fn)

    expected = f1(class_weight="balanced")
    assert expected != pytest.approx(f1(), abs=0.01)  # balancing matters on this task
    assert probe_f1(task, torch.tensor([0, 1])) == pytest.approx(expected, abs=1e-9)
    assert probe_f1(task, torch.tensor([0])) > 0.2


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.5])
def test_binary_f1_equals_sklearns(rate):
    """The package's F1 (no scikit-learn import at run time) equals sklearn.metrics.f1_score, zero_division=0
    included (no positives anywhere)."""
    from sklearn.metrics import f1_score

    from saelens_amort.metrics.probes import binary_f1

    gen = torch.Generator().manual_seed(int(rate * 100))
    for _ in range(20):
        truth = torch.rand(200, generator=gen) < rate
        pred = torch.rand(200, generator=gen) < rate * 1.5
        assert binary_f1(truth, pred) == pytest.approx(f1_score(truth.numpy(), pred.numpy(), zero_division=0.0))
