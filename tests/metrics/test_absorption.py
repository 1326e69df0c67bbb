"""Absorption rate (main = top-1 by signed corr, aux = next 5) on a constructed case with known fractions."""

import pytest
import torch

from saelens_amort.metrics import MetricBatch, make_metric

N = 600


def constructed():
    """Rows r: y = r even. Each class has its own latent and an 'absorbing' one that fires instead of it on a known
    part of the class: latent 0 on the positives, latent 1 on the positives with (r // 2) % 4 == 0; latent 2 on the
    negatives, latent 3 on the negatives with (r // 2) % 3 == 0. Latents 4..7 never fire (corr 0).
    By |corr| the negatives' top latent would be latent 0 (0.77 > 0.71 of latent 2), which never fires on them."""
    rows = torch.arange(N)
    y = (rows % 2 == 0).long()
    absorbed = torch.where(y == 1, (rows // 2) % 4 == 0, (rows // 2) % 3 == 0)
    codes = torch.zeros(N, 8)
    codes[:, 0] = ((y == 1) & ~absorbed).float()
    codes[:, 1] = ((y == 1) & absorbed).float()
    codes[:, 2] = ((y == 0) & ~absorbed).float()
    codes[:, 3] = ((y == 0) & absorbed).float()
    x = torch.randn(N, 4, generator=torch.Generator().manual_seed(0))
    return MetricBatch(x, x, codes, labels=y, doc_ids=rows // 5), absorbed


def test_known_absorption_fraction_per_class():
    batch, absorbed = constructed()
    m = make_metric("absorption", label_names=("neg", "pos"))
    m.update(batch)
    out = m.compute()
    latents = m.artifacts()["latents"]
    assert latents["real/pos"] == {"main": 0, "aux": [1, 4, 5, 6, 7]}  # anti-correlated latents 2, 3 last
    assert latents["real/neg"] == {"main": 2, "aux": [3, 4, 5, 6, 7]}  # its own latent, not the positives' 0
    test = batch.doc_ids % 5 == 0
    expected = {}
    for name, c in (("neg", 0), ("pos", 1)):
        expected[name] = float(absorbed[test & (batch.labels == c)].float().mean())
        assert 0.1 < expected[name] < 0.5
        assert out[f"real/{name}/absorption_rate"] == pytest.approx(expected[name])
        assert out[f"real/{name}/main_fire_rate"] == pytest.approx(1 - expected[name])
    assert out["real/absorption_rate"] == pytest.approx((expected["neg"] + expected["pos"]) / 2)
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
