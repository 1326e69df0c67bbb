"""Counted FLOPs (`info["flops"]`) against torch's own count of the matrix products each mode actually ran.

The independent reference is `torch.utils.flop_counter.FlopCounterMode`, with three corrections to what it sees:
a CSR × dense product is counted as 2·nnz·p (torch counts it as if the sparse matrix were dense), and in-place
`addmm_` is counted (torch skips it). Both sides count the same integer products, so they must agree exactly (the
tolerance is fp64 rounding of sums of integers). The non-matmul part (Cholesky factorisations and solves, Gram-row
updates) is what FlopCounterMode cannot see: `info["flops"]` ≥ `info["flops_matmul"]`, equal for the modes that run
none of it.
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import saelens_amort
from saelens_amort.inference import infer, list_modes, resolve_dictionary
from saelens_amort.inference.working_set import solve_working_set
from helpers import toy_activations

aten = torch.ops.aten
BUILT_IN = ("amortized", "unamortized", "semi", "omp", "mp", "ksparse", "semi_ksparse")
LAM = 5.0
K = 12

CALLS = [
    ("amortized", {"lam": LAM}),
    ("unamortized", {"lam": LAM, "steps": 12}),
    ("unamortized", {"lam": LAM, "steps": 12, "gram": False}),
    ("unamortized", {"lam": LAM, "steps": 12, "solver": "fista"}),
    ("semi", {"lam": LAM, "steps": 12}),
    ("semi", {"lam": LAM, "steps": 12, "init": "alista"}),
    ("semi", {"lam": LAM, "steps": 12, "solver": "working_set"}),
    ("omp", {"k": K}),
    ("mp", {"k": K}),
    ("ksparse", {"steps": 12}),
    ("ksparse", {"steps": 12, "starts": 2}),
    ("semi_ksparse", {"steps": 12}),
    ("amortized", {"lam": LAM, "refit": True}),
    ("unamortized", {"lam": LAM, "steps": 12, "refit": True}),
]
ON_GATED = {"amortized", "unamortized", "semi"}
"""The gated SAE (two encoder products, wider supports) runs each mode's default call; toy/topk runs them all."""
MATMUL_ONLY = {"amortized", "semi"}
"""Modes (default calls) that run nothing but matrix products and elementwise work."""
CASES = [("topk", m, k) for m, k in CALLS] + [
    ("gated", m, k) for m, k in CALLS if m in ON_GATED and set(k) <= {"lam", "steps"}]


def _mm(a, b, *args, out_val=None, **kwargs):
    if a.layout == torch.sparse_csr:
        return 2 * a.values().numel() * b.shape[1]
    return 2 * a.shape[0] * a.shape[1] * b.shape[1]


def _addmm(c, a, b, *args, out_val=None, **kwargs):
    return _mm(a, b)


def _bmm(a, b, *args, out_val=None, **kwargs):
    return 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]


for _f in (_mm, _addmm, _bmm):
    _f._get_raw = True
COUNTS = {aten.mm: _mm, aten.addmm: _addmm, aten.addmm_: _addmm, aten.bmm: _bmm}


def torch_count(fn) -> tuple[int, object]:
    with FlopCounterMode(display=False, custom_mapping=COUNTS) as counter:
        out = fn()
    return counter.get_total_flops(), out


@pytest.fixture(scope="module")
def rows():
    return toy_activations()[:48]


def test_every_built_in_mode_is_covered():
    assert set(BUILT_IN) <= set(list_modes())
    assert set(BUILT_IN) == {mode for mode, _ in CALLS}


@pytest.mark.parametrize("family, mode, kwargs", CASES,
                         ids=[f"{f}-{m}-{'-'.join(f'{a}={b}' for a, b in k.items())}" for f, m, k in CASES])
def test_counted_matmul_flops_equal_torch_count(rows, family, mode, kwargs):
    sae = saelens_amort.load_sae(f"toy/{family}")
    infer(rows, sae, mode, **kwargs)  # warm the per-dictionary caches (Gram, σ_max, encoder count): not per row
    expected, res = torch_count(lambda: infer(rows, sae, mode, **kwargs))
    flops, matmul = res.info["flops"], res.info["flops_matmul"]
    assert flops.dtype == torch.float64 and flops.shape == (rows.shape[0],)
    assert float(matmul.sum()) == pytest.approx(expected, rel=1e-9)
    assert bool((flops >= matmul).all()) and bool((matmul > 0).all())
    if mode in MATMUL_ONLY and set(kwargs) <= {"lam", "steps", "init"}:
        assert torch.equal(flops, matmul)


def test_gated_encoder_counts_both_products(rows):
    """A gated encoder runs two [d_in, d_sae] products (gate and magnitude): 4·d·m per row, not 2·d·m."""
    sae = saelens_amort.load_sae("toy/gated")
    d = resolve_dictionary(sae)
    res = infer(rows, sae, "amortized")
    assert res.info["flops"].tolist() == [4.0 * d.d_in * d.d_sae] * rows.shape[0]


def test_working_set_counts_restricted_products_below_dense_fista(rows):
    """On a sparse problem the working-set solver's counted FLOPs are far below the dense-FISTA formula for the same
    iterations (4·d·m per inner iteration), which the cost metric used to charge."""
    sae = saelens_amort.load_sae("toy/topk")
    d = resolve_dictionary(sae)
    res = infer(rows, sae, "unamortized", lam=LAM)
    assert float((res.codes > 0).sum(dim=1).float().mean()) < 0.05 * d.d_sae  # sparse
    dense_formula = 4.0 * d.d_in * d.d_sae * res.n_iter.double()
    assert float(res.info["flops"].sum()) < 0.2 * float(dense_formula.sum())


def test_fp64_pass_rows_are_charged(rows):
    """Rows an fp32 pass leaves uncertified are solved again in fp64 (a budget of 8 leaves every row uncertified
    after its fp32 share of 6): their second pass is counted too."""
    d = resolve_dictionary(saelens_amort.load_sae("toy/standard"))
    x_t = d.target(rows[:16])
    expected, out = torch_count(lambda: solve_working_set(x_t, d.atoms, 0.5, max_iter=8))
    assert bool((out.n_iter > 6).any())
    assert float(out.flops.matmul.sum()) == pytest.approx(expected, rel=1e-9)
