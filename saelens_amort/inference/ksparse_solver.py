"""The k-sparse solver: monotone non-negative projected gradient with a top-k projection, polished on the support
(non-negative hard thresholding pursuit), for the modes of `ksparse.py`.

    min_u ½ ‖x' − u A‖²   s.t.  u ≥ 0,  ‖u‖₀ ≤ k_r          (k_r per row)

Per row, batched:

1. v = u + μ (x' − uA) Aᵀ;  u⁺ = P_k(v) = the k_r largest positive entries of v (the exact projection onto
   {u ≥ 0, ‖u‖₀ ≤ k_r});
2. polish on the support S of u⁺: the least-squares solution γ on S (fp64 Cholesky); u⁺ moves towards γ, all the
   way when γ > 0, else POLISH_FRACTION of the way to where the first coefficient reaches 0 (½‖x' − uA‖² is convex
   on that segment and smallest at γ, so it falls, and |S| is kept). Rows with more atoms than dimensions, or a
   numerically singular support Gram, skip the polish;
3. monotone: a step that raises ½‖x' − uA‖² is rejected. μ starts at MAX_STEP / L, doubles after an accepted step
   (up to MAX_STEP / L) and halves after a rejected one, never below 1/L (L = σ_max(A)²), where no step can raise
   it (P_k minimises the quadratic majoriser over the constraint set, on which u lies). Rows whose k_r reaches d_in
   (no polish; e.g. a JumpReLU firing 166 latents on the BOS-like rows of the toy) start at μ = 1/L: from
   MAX_STEP / L their first four steps were all rejected (toy/jumprelu semi_ksparse, 2 048 rows, ‖r‖²/‖x'‖² after
   5 steps 0.060 → 0.036).

A row stops when its support is unchanged and ½‖x' − uA‖² fell by ≤ tol relative, when a 1/L step is rejected (a
fixed point up to rounding), when its residual is explained to rounding (½‖x' − uA‖² ≤ EXPLAINED · eps · ‖x'‖²; no
code can do better by more than that), when its code is least squares on its support and the step keeps that
support (a fixed point: the step's polish would return the same code, so it is skipped; toy/gated `ksparse`, 2 048
rows: 3.6–4.2 → 2.9 s, rounds spent on rounding-level rejections at the fixed point gone, the same objective), or
after `steps` iterations (default 100; semi_ksparse 5).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from saelens_amort.inference.active_set import compiled_gram
from saelens_amort.inference.block_solver import size_groups
from saelens_amort.inference.flops import Flops
from saelens_amort.inference.gram import work_dtype
from saelens_amort.inference.refit import SupportSystems, masked_cholesky_solve
from saelens_amort.inference.sparse_codes import csr_tensor
from saelens_amort.saes.dictionary import Dictionary

DEFAULT_MAX_ITER = 100
"""Iteration cap (`steps`); rows usually stop far earlier, once their support settles."""

MAX_STEP = 16.0
"""μ starts at MAX_STEP / L and never exceeds it: long steps let the support change by more than one atom."""

POLISH_FRACTION = 0.9
"""When the least-squares solution on the support has a coefficient ≤ 0, the polish goes this fraction of the way
to the first zero crossing (keeping every coefficient > 0)."""

GROUP_RATIO = 1.25
"""The polish factorises rows in groups whose support sizes lie within this factor (a block's k_r span up to 2×: one
factorisation at the block's k_max cost up to 8× the FLOPs of the row's own)."""

EXPLAINED = 16
"""A row whose ½‖x' − uA‖² is at most EXPLAINED · eps · ‖x'‖² has converged: its residual is rounding (the working-set
solver's FLOOR). Rows with k_r ≥ d_in reach it from their OMP start; before this rule they ran all 100 iterations
with supports flickering in the last digits (toy/gated, 16 BOS-like rows of 1 024 at k_r 160: ½‖x' − uA‖² / ½‖x'‖²
6.4e-7 → 1.4e-7, 0.09 s of the batch's 1.8 s)."""


class KSparseOutput(NamedTuple):
    u: Float[Tensor, "N d_sae"]
    """Unit-atom codes (≥ 0, at most k_r non-zeros per row)."""
    residual: Float[Tensor, "N d_in"]
    """x' − uA."""
    n_iter: Int[Tensor, " N"]
    converged: Tensor
    """Per row: stopped by the support/tolerance rule or at a fixed point (not by the iteration cap)."""
    rejected: int
    """Steps rejected because they would have raised ½‖x' − uA‖²."""
    flops: Flops
    """FLOPs run per row (`flops.py`)."""


@torch.no_grad()
def ksparse_pg(
    x_target: Float[Tensor, "N d_in"],
    dictionary: Dictionary,
    k_rows: Int[Tensor, " N"],
    *,
    u0: Float[Tensor, "N d_sae"] | None = None,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = 1e-4,
    polish_start: bool = False,
) -> KSparseOutput:
    """Monotone non-negative k-sparse projected gradient (module docstring) for the rows of x' = `x_target`;
    `polish_start`: polish the start on its support first (its magnitudes; OMP's codes need none). On the CPU with
    a Gram the compiled solvers take (`active_set.compiled_gram`) the rows run one at a time in fp64
    (`ksparse_kernels.py`): the same steps and rules."""
    wd = work_dtype(dictionary.atoms.dtype)
    A, X = dictionary.atoms.to(wd), x_target.to(wd)
    n, m = X.shape[0], A.shape[0]
    dev = X.device
    gram64 = compiled_gram(dictionary, dev) if dev.type == "cpu" else None
    if gram64 is not None:
        from saelens_amort.inference.ksparse_kernels import ksparse_compiled

        return ksparse_compiled(X, dictionary, gram64, k_rows, u0, max_iter, tol, polish_start)
    flops = Flops(n, dev)
    systems = SupportSystems(x_target, dictionary, flops)
    lipschitz = dictionary.lipschitz
    T = max(1, int(k_rows.max())) if n else 1
    allowed = torch.arange(T, device=dev) < k_rows.to(dev).unsqueeze(1)
    start = torch.zeros(n, m, dtype=wd, device=dev) if u0 is None else u0.to(wd)
    idx, val = _project(start, allowed)
    exact = torch.zeros(n, dtype=torch.bool, device=dev)  # val is the least-squares solution on its support
    if polish_start and n:
        val, exact = _polish(systems, torch.arange(n, device=dev), idx, val, A.shape[1])
    residual = X - _times_atoms(idx, val, A)
    flops.add(2.0 * T * A.shape[1])
    F = half_sq(residual)
    explained = EXPLAINED * torch.finfo(wd).eps * X.double().square().sum(dim=1)
    base = 1.0 / lipschitz if lipschitz > 0 else 1.0
    mu = torch.where(k_rows.to(dev) >= A.shape[1], 1.0, MAX_STEP).to(wd) * base
    n_iter = torch.zeros(n, dtype=torch.long, device=dev)
    converged = F <= explained
    live = (~converged).nonzero().squeeze(1)
    rejected = 0
    for _ in range(max_iter):
        if live.numel() == 0:
            break
        i_l, v_l, F_l, mu_l = idx[live], val[live], F[live], mu[live]
        v = (residual[live] @ A.T).mul_(mu_l.unsqueeze(1)).scatter_add_(1, i_l, v_l)
        i_new, v_new = _project(v, allowed[live])
        flops.add(2.0 * A.shape[1] * m, live)
        # A step that keeps the support of a code that is least squares on it would return that very code: the row
        # is at a fixed point, and the polish and residual of that step are skipped.
        fixed = exact[live] & _same_support(i_l, v_l, i_new, v_new)
        if bool(fixed.any()):
            n_iter[live[fixed]] += 1
            converged[live[fixed]] = True
            keep = ~fixed
            live, i_l, v_l, F_l, mu_l, i_new, v_new = (t[keep] for t in (live, i_l, v_l, F_l, mu_l, i_new, v_new))
            if live.numel() == 0:
                break
        v_new, reached = _polish(systems, live, i_new, v_new, A.shape[1])
        r_new = X[live] - _times_atoms(i_new, v_new, A)
        flops.add(2.0 * T * A.shape[1], live)
        F_new = half_sq(r_new)
        accept = F_new <= F_l
        n_iter[live] += 1
        rejected += int((~accept).sum())
        settled = accept & _same_support(i_l, v_l, i_new, v_new) & (F_l - F_new <= tol * F_new)
        stalled = ~accept & (mu_l <= base * (1 + 1e-6))
        done = settled | stalled | (accept & (F_new <= explained[live]))
        take = live[accept]
        idx[take], val[take], residual[take], F[take] = i_new[accept], v_new[accept], r_new[accept], F_new[accept]
        exact[take] = reached[accept]
        mu[live] = torch.where(accept, (2 * mu_l).clamp_max(MAX_STEP * base), (mu_l / 2).clamp_min(base))
        converged[live[done]] = True
        live = live[~done]
    u = torch.zeros(n, m, dtype=wd, device=dev).scatter_(1, idx, val)
    return KSparseOutput(u, residual, n_iter, converged, rejected, flops)


def _project(v: Tensor, allowed: Tensor) -> tuple[Tensor, Tensor]:
    """P_k: the k_r largest positive entries of each row (slots past k_r, and non-positive entries, hold 0)."""
    top = v.topk(allowed.shape[1], dim=1)
    return top.indices, torch.where(allowed & (top.values > 0), top.values, 0.0)


def _times_atoms(idx: Tensor, val: Tensor, A: Tensor) -> Tensor:
    """Σ_s val[r, s] · A[idx[r, s]] per row (a CSR product)."""
    n, T = idx.shape
    crow = torch.arange(0, n * T + 1, T, device=idx.device)
    return csr_tensor(crow, idx.reshape(-1), val.reshape(-1), (n, A.shape[0])) @ A


def half_sq(residual: Tensor) -> Tensor:
    return 0.5 * residual.double().square().sum(dim=1)


def _same_support(i_old: Tensor, v_old: Tensor, i_new: Tensor, v_new: Tensor) -> Tensor:
    """Per row: the active atoms of the two slot lists are the same set."""
    m = torch.iinfo(i_old.dtype).max
    a = torch.where(v_old > 0, i_old, m).sort(dim=1).values
    b = torch.where(v_new > 0, i_new, m).sort(dim=1).values
    return (a == b).all(dim=1)


def _polish(systems: SupportSystems, rows: Tensor, idx: Tensor, val: Tensor, d_in: int) -> tuple[Tensor, Tensor]:
    """Move each row's support coefficients towards the least-squares solution on its support (module docstring),
    and say per row whether they reached it. Rows with more than d_in atoms, or a numerically singular support Gram,
    keep their coefficients (and did not).

    Rows are solved in groups of similar support size (`size_groups`), each with its active slots moved to the
    front, so a factorisation is as wide as its group's largest support, not the block's k_max."""
    active = val > 0
    count = active.sum(dim=1)
    out = val.clone()
    reached = torch.zeros(val.shape[0], dtype=torch.bool, device=val.device)
    for sel, width in size_groups(count, GROUP_RATIO, d_in):
        order = torch.argsort((~active[sel]).to(torch.int8), dim=1, stable=True)[:, :width]  # active slots first
        act, v = active[sel].gather(1, order), val[sel].gather(1, order).double()
        gamma, singular = masked_cholesky_solve(*systems(rows[sel], idx[sel].gather(1, order), act), act,
                                                systems.flops, rows[sel], masked=True)
        neg = act & (gamma <= 0)
        ratio = torch.where(neg, v / (v - gamma), torch.inf).amin(dim=1, keepdim=True)
        alpha = torch.where(torch.isinf(ratio), 1.0, POLISH_FRACTION * ratio)
        alpha = torch.where(singular.unsqueeze(1), 0.0, alpha)
        moved = torch.where(act, v + alpha * (gamma - v), 0.0).to(val.dtype)
        out[sel] = torch.zeros_like(val[sel]).scatter_(1, order, moved)
        reached[sel] = torch.isinf(ratio).squeeze(1) & ~singular
    return out, reached
