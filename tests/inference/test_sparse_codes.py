"""`to_csr` builds CSR itself (flat nonzero, binary-searched row pointers): it must be torch's `to_sparse_csr` exactly,
edge cases included."""

import warnings

import pytest
import torch

from saelens_amort.inference.sparse_codes import row_sums, to_csr

G = torch.Generator().manual_seed(0)
CASES = {
    "no rows": torch.zeros(0, 5),
    "no columns": torch.zeros(3, 0),
    "all zero": torch.zeros(4, 6),
    "signed zero and nan": torch.tensor([[0.0, -0.0, 1.0], [float("nan"), 0.0, 0.0], [0.0, 0.0, 0.0]]),
    "empty first and last rows": torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 0.0]]),
    "fp32 codes": torch.randn(7, 9, generator=G).clamp_min(0),
    "fp64 codes": torch.randn(5, 8, generator=G, dtype=torch.float64).clamp_min(0),
    "bf16 codes": torch.randn(6, 4, generator=G).clamp_min(0).bfloat16(),
    "not contiguous": torch.randn(8, 10, generator=G).clamp_min(0).T,
    "dense rows": torch.rand(3, 5, generator=G) + 0.1,
}


@pytest.mark.parametrize("u", CASES.values(), ids=CASES.keys())
def test_to_csr_is_torchs_to_sparse_csr(u):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, torchs = to_csr(u), u.to_sparse_csr()
    assert ours.layout == torch.sparse_csr and ours.shape == torchs.shape
    for part in ("crow_indices", "col_indices", "values"):
        a, b = getattr(ours, part)(), getattr(torchs, part)()
        assert a.dtype == b.dtype and a.shape == b.shape, part
        assert torch.equal(a.nan_to_num(-7.0) if a.is_floating_point() else a,
                           b.nan_to_num(-7.0) if b.is_floating_point() else b), part
    finite = u.nan_to_num(0.0)
    assert torch.allclose(row_sums(to_csr(finite)), finite.double().sum(dim=1), rtol=1e-12, atol=1e-12)
