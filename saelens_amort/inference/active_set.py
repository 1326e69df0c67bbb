"""A compiled per-row active-set solver for the non-negative lasso (the CPU path of the unamortized mode and z*).

    min_u  F(u) = ½ ‖x' − u A‖² + λ ‖u‖₁ ,  u ≥ 0,   i.e.   min_u ½ uᵀGu − (c − λ)ᵀu + ½‖x'‖²,  G = AAᵀ, c = x'Aᵀ

Each row runs the primal active-set method of Lawson and Hanson on this quadratic program, one row at a time in
numba-compiled loops with an fp64 Gram:

1. gradient w = Gu − c + λ over every atom (the one d_sae-wide pass of a round, 2·d_sae·|S| FLOPs), the duality gap
   of `working_set` (θ = s·r, s = min(1, λ / max_j (c − Gu)_j)); stop when gap ≤ max(tol·F, FLOOR·eps·‖x'‖²);
2. the up to PER_ROUND most violating atoms (w_j < 0 outside the support S) join S, each by a Cholesky row
   appended to the factor of G_SS (an atom that is numerically a combination of S is left out of this row);
3. the face minimiser z = G_SS⁻¹ (c_S − λ) (one pair of triangular solves: a "face solve", the unit of `n_iter`);
   where some z_s ≤ 0 the code moves from u towards z until the first coordinate reaches zero, that atom leaves S
   (a Givens downdate of the factor) and the face is solved again; otherwise u_S = z and the row goes back to 1.

Against the batched working-set solver (`working_set.py`), whose rows wait on each other inside hundreds of small
batched operations per round, a row here costs only its own arithmetic: toy/gated at its unamortized λ, 2 048 rows,
one thread, 1.0 s against 3.3–4.7 s, every row certified, objectives equal to 3e-7 (docs/PERFORMANCE.md).

A row that reaches its budget (`max_iter` face solves) or cannot lower F any further without being certified (an
atom it needs is numerically dependent on its support) is returned uncertified, with its codes; `working_set`
continues those rows on its own path. Numbers: everything in fp64; the caller passes G = AAᵀ in fp64.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from saelens_amort.inference import gram as gram_cache
from saelens_amort.inference.flops import Flops
from saelens_amort.inference.result import SolveOutput
from saelens_amort.inference.working_set import DEFAULT_WS_SIZE, continue_fine
from saelens_amort.saes.dictionary import Dictionary

PER_ROUND = 4
"""Atoms that may join a row's support per round (the most violating first). 1 is Lawson–Hanson's rule; 4 takes
61 → 18 rounds a row on toy/gated and is 20–25 % faster; 8 no faster."""

MAX_SUPPORT = 512
"""Support size a row may reach here (the factor is MAX_SUPPORT² per row); wider rows go to `working_set`."""

FLOOR = 16
"""Gaps below FLOOR · eps · ‖x'‖² are rounding noise (as in `working_set`)."""

DEPENDENT = 1e-10
"""An atom whose Cholesky pivot is below DEPENDENT times its squared norm is numerically a combination of S."""


MAX_GRAM_BYTES = 1 << 28
"""Largest fp64 Gram the compiled path uses (256 MiB: d_sae ≤ 5 792); wider dictionaries run `working_set`."""


def compiled_gram(dictionary: Dictionary, device: torch.device) -> Tensor | None:
    """The cached fp64 Gram when the compiled path applies to `dictionary` on `device` (else None): the CPU, a Gram
    within MAX_GRAM_BYTES, and numba importable (it is a dependency; a broken install runs `working_set`)."""
    if device.type != "cpu" or dictionary.atoms.device.type != "cpu":
        return None
    if gram_cache.gram_bytes(dictionary.d_sae, torch.float64) > MAX_GRAM_BYTES:
        return None
    try:
        _kernels()
    except ImportError:
        return None
    return gram_cache.atom_gram(dictionary, torch.float64)


def solve_active_set(
    x_target: Float[Tensor, "N d_in"], atoms: Float[Tensor, "d_sae d_in"], lam: float, gram64: Float[Tensor, "d_sae d_sae"],
    *, u0: Float[Tensor, "N d_sae"] | None = None, max_iter: int = 200, tol: float = 1e-4,
    ws_size: int = DEFAULT_WS_SIZE,
) -> SolveOutput:
    """Solve every row of `x_target` (CPU) to relative duality gap ≤ `tol` within `max_iter` face solves a row.

    `gram64` is AAᵀ in fp64. Rows left uncertified with budget to spare continue on `working_set`'s fp64 path from
    their codes (with `ws_size`); codes come back in the atoms' dtype, objectives in fp64."""
    solve_rows = _kernels()
    x = x_target.double()
    A = atoms.double()
    c = x @ A.T
    xx = x.square().sum(dim=1)
    n, m = c.shape
    flops = Flops(n)
    flops.product(x, m)
    u = torch.zeros(n, m, dtype=torch.float64) if u0 is None else u0.double().clamp_min(0).contiguous()
    stats = np.zeros((n, 4))  # face solves, certified, F, FLOPs
    solve_rows(gram64.contiguous().numpy(), c.numpy(), float(lam), xx.numpy(), float(tol),
               FLOOR * torch.finfo(torch.float64).eps, int(max_iter), PER_ROUND, MAX_SUPPORT, DEPENDENT,
               u.numpy(), stats)
    st = torch.from_numpy(stats)
    flops.add(st[:, 3], None, matmul=False)  # the kernel's loops: not torch products
    n_iter, converged, objective = st[:, 0].long(), st[:, 1] > 0, st[:, 2].clone()
    restarts = torch.zeros(n, dtype=torch.long)
    left = (~converged & (n_iter < max_iter)).nonzero().squeeze(1)
    if left.numel():
        more = continue_fine(x[left], A, lam, u[left], max_iter, tol, ws_size, n_iter[left])
        u[left] = more.u
        n_iter[left], converged[left], objective[left] = more.n_iter, more.converged, more.objective
        restarts[left] = more.restarts
        flops.absorb(more.flops, left)
    return SolveOutput(u=u.to(atoms.dtype), n_iter=n_iter, objective=objective, converged=converged,
                       restarts=restarts, flops=flops)


def start_warm_up() -> None:
    """Compile every numba kernel (or load numba's cache) in a background thread, so the first solve does not wait
    for it: a fresh install compiles for 10–20 s once, a later run loads them in about a second. Runners start it
    before loading the model and collecting activations; a solve that needs a kernel still being compiled waits for
    it (numba's compiler lock). Without numba it does nothing (the batched paths run). Not a daemon thread: the
    interpreter waits for it at exit, as one killed inside LLVM aborts the process ("terminate called without an
    active exception", exit 134, after a short run had written its results)."""
    import threading

    threading.Thread(target=_warm_up, name="saeamort-compile", daemon=False).start()


def _warm_up() -> None:
    from saelens_amort.inference.ksparse_kernels import ksparse_compiled
    from saelens_amort.inference.omp_kernels import nn_omp_compiled

    try:
        _kernels()
    except ImportError:
        return
    gen = torch.Generator().manual_seed(0)
    d = Dictionary.from_matrix(torch.nn.functional.normalize(torch.randn(12, 6, generator=gen), dim=1))
    x = torch.randn(3, 6, generator=gen)
    gram64 = d.atoms.double() @ d.atoms.double().T
    with torch.no_grad():
        solve_active_set(x, d.atoms, 0.1, gram64)
        nn_omp_compiled(x, d.atoms, 3, gram64, torch.full((3,), 3), torch.full((3,), 2))
        ksparse_compiled(x, d, gram64, torch.full((3,), 2), None, 5, 1e-4, True)


_COMPILED = None


def _kernels():
    """Compile (or load from numba's cache) the per-row kernels on first use."""
    global _COMPILED
    if _COMPILED is None:
        from saelens_amort.inference import active_set_kernels

        _COMPILED = active_set_kernels.solve_rows
    return _COMPILED
