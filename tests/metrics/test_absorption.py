"""Absorption rate (main = top-1 by |corr|, aux = next 5) on a constructed case with a known fraction."""

import pytest
import torch

from saelens_amort.metrics import MetricBatch, make_metric

N = 500


def constructed():
    """Rows r: y = r even. Positives with (r // 2) % 4 == 0 are 'absorbed': latent 1 fires instead of latent 0.
    Latents 2..6 fire on disjoint fifths of the negatives (|corr| ≈ 0.33 < 0.38 of latent 1 < 0.77 of latent 0)."""
    rows = torch.arange(N)
    y = (rows % 2 == 0).long()
    absorbed = (y == 1) & ((rows // 2) % 4 == 0)
    codes = torch.zeros(N, 7)
    codes[:, 0] = ((y == 1) & ~absorbed).float()
    codes[:, 1] = absorbed.float()
    for j, residue in zip(range(2, 7), (1, 3, 5, 7, 9)):
        codes[:, j] = (rows % 10 == residue).float()
    x = torch.randn(N, 4, generator=torch.Generator().manual_seed(0))
    return MetricBatch(x, x, codes, labels=y, doc_ids=rows // 5), absorbed


def test_known_absorption_fraction():
    batch, absorbed = constructed()
    m = make_metric("absorption", label_names=("neg", "pos"))
    m.update(batch)
    out = m.compute()
    assert m.artifacts()["latents"]["real/pos"] == {"main": 0, "aux": [1, 2, 3, 4, 5]}
    test_pos = (batch.doc_ids % 5 == 0) & (batch.labels == 1)
    expected = float(absorbed[test_pos].float().mean())
    assert 0 < expected < 1
    assert out["real/pos/absorption_rate"] == pytest.approx(expected)
    assert out["real/pos/main_fire_rate"] == pytest.approx(1 - expected)
    # for the negatives the main latent is latent 0 as well (|corr| is symmetric); it never fires on them, and
    # among the aux latents 2..5 fire on 4 of the 5 negative residues
    assert out["real/neg/absorption_rate"] == pytest.approx(0.8)
    assert out["real/absorption_rate"] == pytest.approx((expected + 0.8) / 2)
    assert out["pseudo/absorption_rate"] is not None and 0 <= out["pseudo/absorption_rate"] <= 1


def test_skips_and_merge():
    batch, _ = constructed()
    m = make_metric("absorption")
    m.update(batch._replace(labels=None))
    out = m.compute()
    assert out["real/absorption_rate"] is None and m.skipped["real/absorption_rate"] == "source has no labels"

    a, b, whole = make_metric("absorption"), make_metric("absorption"), make_metric("absorption")
    cut = 210
    a.update(MetricBatch(*(t[:cut] if isinstance(t, torch.Tensor) else t for t in batch)))
    b.update(MetricBatch(*(t[cut:] if isinstance(t, torch.Tensor) else t for t in batch)))
    whole.update(batch)
    assert a.merge(b).compute() == whole.compute()
