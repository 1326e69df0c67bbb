"""OMP: non-negative orthogonal matching pursuit, k atoms per row, batched (DESIGN §3).

Per row, starting from u = 0, k times:

1. select the atom with the largest *positive* correlation ⟨r, a_j⟩ with the residual (atoms active in the support
   are excluded); a row stops early when no correlation exceeds 1000·eps·‖x'‖ (its residual is numerically
   explained, or nothing correlates positively);
2. extend the Cholesky factor L of the support's Gram G_SS = A_S A_Sᵀ by one row (w = L⁻¹ A_S a_j,
   ℓ = √(1 − ‖w‖²)); a row whose new atom is numerically in the span of its support stops;
3. refit the coefficients on the support as a non-negative least-squares problem: the unconstrained solution
   G_SS γ = A_S x' (y = L⁻¹ A_S x' is extended by one entry per step, so one triangular solve Lᵀγ = y) is kept
   when it is ≥ 0; otherwise Lawson–Hanson steps run from
   the previous (feasible) coefficients towards it — move to where the first coefficient hits 0, drop that atom
   from the active support, refactor the masked Gram, re-solve, repeat until the solution is ≥ 0.

Every refit starts from a feasible point and only moves downhill on a convex problem, so ‖r‖ never increases with
k. A dropped atom may be selected again later (its correlation must be positive again). `n_iter` counts the
selections, so L0 ≤ n_iter ≤ k.

Cost. With the d_sae² Gram G = AAᵀ (built once per dictionary and cached, when d_sae ≤ MAX_GRAM_ATOMS and the
batch pays for it) the correlations are c = x'Aᵀ − γ G_S, one sparse [N, d_sae] × [d_sae, d_sae] product with
N·|S| non-zeros per step (Batch-OMP, Rubinstein et al. 2008), while the support is small (GRAM_SUPPORT_RATIO);
otherwise r = x' − γA_S and c = rAᵀ, one dense matmul per step. The rest is O(N k²) triangular algebra, in fp32
(fp64 for fp64 dictionaries). Copying the selecting rows' factors out of the [N, k, k] batch is most of that: each
step copies them once and solves both triangular systems on the copy, and the refits read the support's Gram from
an [N, k, k] table filled as atoms are selected (toy/gated, the 309 rows of 1 024 with L0 55–106, one thread: 0.94
→ 0.61 s; the same codes but for a few rows per 1 024 where rounding tips a near-tie to another atom)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from saelens_amort.errors import SaeAmortError
from saelens_amort.inference.flops import Flops, cholesky, cholesky_solve, combine
from saelens_amort.inference.gram import atom_gram, has_gram, work_dtype  # noqa: F401  (re-exported for mp)
from saelens_amort.inference.sparse_codes import csr_tensor
from saelens_amort.inference.registry import register_mode
from saelens_amort.inference.result import InferenceResult, ModeOptions, make_result, objective_from_residual
from saelens_amort.saes.dictionary import Dictionary

BATCH_ELEMENTS = 2**26
"""Rows per chunk are chosen so one chunk's working set stays near this many numbers."""

MAX_GRAM_ATOMS = 16384
"""Above this many atoms the d_sae² Gram (1 GiB in fp32 at 16384) is never built; correlations are r Aᵀ instead."""

STOP_CORRELATION = 1000
"""A row stops when no correlation exceeds STOP_CORRELATION · eps · ‖x'‖ (its residual is numerically explained)."""

INDEPENDENCE = 100
"""A new atom is refused when its squared distance to the span of the support is below INDEPENDENCE · eps."""

GRAM_SUPPORT_RATIO = 8
"""Correlations go through the Gram (a sparse product with |S| non-zeros per row) while |S| · GRAM_SUPPORT_RATIO ≤
d_in, else through the dense residual (rAᵀ, d_in / |S| times the FLOPs but a dense GEMM): on CPU the sparse product
runs about 8× fewer FLOPs per second (toy, d_in 128, 1024 rows: |S| = 32 costs 33 ms through the Gram, 7 ms dense)."""

class PursuitOutput(NamedTuple):
    u: Float[Tensor, "N d_sae"]
    """Unit-atom codes (≥ 0)."""
    residual: Float[Tensor, "N d_in"]
    """x' − uA."""
    n_iter: Int[Tensor, " N"]
    """Atoms selected (pursuit steps taken) per row."""
    atoms_dropped: int
    """Atoms removed from supports by the non-negative refits (OMP; 0 for MP)."""
    flops: Flops
    """FLOPs run per row (`flops.py`)."""
    u_prefix: Float[Tensor, "N d_sae"] | None = None
    """With `prefix`: each row's codes when it had made prefix[r] selections (OMP at that k: its greedy path is a
    prefix of the longer run's), or its final codes if it stopped earlier."""


def check_k(k: int | None, d_sae: int, mode: str) -> int:
    """k as a validated integer in [1, d_sae]."""
    if k is None:
        raise SaeAmortError(f"mode {mode!r} needs k (active latents per row); pass k=...")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= d_sae:
        raise SaeAmortError(f"mode {mode!r}: k must be an integer in [1, d_sae={d_sae}], got {k!r}")
    return k


@torch.no_grad()
def nn_omp(
    x_target: Float[Tensor, "N d_in"],
    atoms: Float[Tensor, "d_sae d_in"],
    k: int,
    *,
    gram: Float[Tensor, "d_sae d_sae"] | None = None,
    k_rows: Int[Tensor, " N"] | None = None,
    prefix: Int[Tensor, " N"] | None = None,
    compiled: bool = False,
) -> PursuitOutput:
    """Non-negative OMP of every row of `x_target` on unit-norm `atoms`, at most k atoms per row (module docstring);
    with `k_rows` (each ≤ k), at most k_rows[r] selections on row r, so a row's code is OMP at its own k whatever
    else shares the batch; with `prefix` (each ≤ k_rows), also each row's codes after prefix[r] selections.

    With `gram` (AAᵀ in the work dtype) correlations are updated as c = x'Aᵀ − γ G_S; without, recomputed as rAᵀ.
    `compiled` (CPU, with a Gram, fp64 preferred: see `pursuit_gram`) runs the rows one at a time in fp64 instead
    (`omp_kernels.py`): the same steps, a few rows per thousand tip a near-tie to another atom.
    """
    wd = work_dtype(atoms.dtype)
    A, X = atoms.to(wd), x_target.to(wd)
    if compiled and gram is not None and X.device.type == "cpu":
        from saelens_amort.inference.omp_kernels import nn_omp_compiled

        return nn_omp_compiled(X, A, k, gram, k_rows, prefix)
    n, m = X.shape[0], A.shape[0]
    dev = X.device
    flops = Flops(n, dev)
    inner = _Atoms(A, gram, n, k, flops)
    c_floor = STOP_CORRELATION * torch.finfo(wd).eps * X.norm(dim=1)
    independent = INDEPENDENCE * torch.finfo(wd).eps  # a new atom's least squared distance to the support's span
    c0 = X @ A.T
    flops.add(2.0 * A.shape[1] * m)

    # Support slots: slot t holds the atom chosen at step t; only slots marked `act` count (the rest are empty or
    # were dropped by a refit). b = A_S x' and the Cholesky factor L are of the masked Gram: G_SS on active slots,
    # identity (and b = 0) on inactive ones, so one batched solve serves every row.
    idx = torch.zeros(n, k, dtype=torch.long, device=dev)
    act = torch.zeros(n, k, dtype=torch.bool, device=dev)
    b = torch.zeros(n, k, dtype=wd, device=dev)
    y = torch.zeros(n, k, dtype=wd, device=dev)  # L⁻¹ b, extended a slot per step (only a refit solves it again)
    # L and G_S are read only where they were written (the lower triangles of filled slots; a refit masks G_S to
    # the active slots): left uninitialised, a block pays for the pages its rows reach, not n·k² numbers of zeros
    # (toy/gated, k = 200 on its BOS-like rows: the two fills were 15 % of OMP)
    L = torch.empty(n, k, k, dtype=wd, device=dev)
    G_S = torch.empty(n, k, k, dtype=wd, device=dev)  # ⟨a_idx[s], a_idx[t]⟩ of the filled slots, for the refits
    gamma = torch.zeros(n, k, dtype=wd, device=dev)
    n_iter = torch.zeros(n, dtype=torch.long, device=dev)
    budget = torch.full((n,), k, dtype=torch.long, device=dev) if k_rows is None else k_rows.to(dev)
    live = (c_floor > 0) & (budget > 0)
    dropped = 0
    if prefix is not None:  # each row's coefficients and active slots when it made its prefix[r]-th selection
        prefix = prefix.to(dev)
        snap_gamma, snap_act, snapped = torch.zeros_like(gamma), torch.zeros_like(act), prefix <= 0

    for t in range(k):
        n_live = int(live.sum())
        if n_live == 0:
            break
        rows = slice(None) if n_live == n else live.nonzero().squeeze(1)
        if t:
            act_r = act[rows, :t]
            c = inner.correlations(X[rows], c0[rows], idx[rows, :t], torch.where(act_r, gamma[rows, :t], 0.0),
                                   live.nonzero().squeeze(1))
            # active atoms can't be picked again (−inf); dropped ones can (+inf leaves c as it is)
            c.scatter_reduce_(1, idx[rows, :t], torch.where(act_r, -torch.inf, torch.inf).to(wd), reduce="amin")
        else:
            c = c0[rows]
        c_max, j_rows = c.max(dim=1)
        ok = c_max > c_floor[rows]
        take = torch.zeros(n, dtype=torch.bool, device=dev)
        take[rows] = ok
        j = torch.zeros(n, dtype=torch.long, device=dev)
        j[rows] = torch.where(ok, j_rows, 0)

        # The triangular algebra runs on the rows that select, on one copy of their factor per step (gathering it is
        # most of the cost): its row t is not set yet, and the forward solve's first t entries (w) do not read it.
        T = t + 1
        sel = take.nonzero().squeeze(1)
        j_sel = j[sel]
        L_sel = L[sel, :T, :T]
        if t:
            g_all = inner.with_new(idx[sel, :t], j_sel, sel)
            G_S[sel, t, :t] = g_all  # a row that does not take slot t now stops: its slot t is never read
            G_S[sel, :t, t] = g_all
            g = torch.cat([g_all * act[sel, :t], g_all.new_zeros(len(sel), 1)], dim=1)
            w_sel = torch.linalg.solve_triangular(L_sel, g.unsqueeze(-1), upper=False).squeeze(-1)[:, :t]
            flops.add(float(t * t), sel, matmul=False)
            ell2 = 1.0 - w_sel.square().sum(dim=1)
        else:
            w_sel = L_sel.new_zeros(len(sel), 0)
            ell2 = inner.norms_sq(j_sel)
        ok = ell2 > independent
        take[sel] = ok
        if not bool(ok.any()):
            break

        tk = take.unsqueeze(1)
        idx[:, t] = torch.where(take, j, 0)
        act[:, t] = take
        b[:, t] = torch.where(take, c0.gather(1, j.unsqueeze(1)).squeeze(1), 0.0)
        w_sel = torch.where(ok.unsqueeze(1), w_sel, 0.0)
        ell = torch.where(ok, ell2.clamp_min(0).sqrt(), 1.0)
        L_sel[:, t, :t], L_sel[:, t, t] = w_sel, ell
        L[sel, t, :t], L[sel, t, t] = w_sel, ell
        G_S[sel, t, t] = inner.norms_sq(j_sel)
        y[sel, t] = (b[sel, t] - (w_sel * y[sel, :t]).sum(dim=1)) / ell
        flops.add(2.0 * t, sel, matmul=False)
        inner.add(t, j, take)
        n_iter += take

        g_ls = torch.zeros(n, T, dtype=wd, device=dev).index_copy_(
            0, sel, torch.linalg.solve_triangular(L_sel.mT, y[sel, :T].unsqueeze(-1), upper=True).squeeze(-1))
        flops.add(float(T * T), sel, matmul=False)
        new, n_drop = _nonnegative_refit(
            gamma[:, :T], g_ls, b[:, :T], y[:, :T], G_S[:, :T, :T], L[:, :T, :T], act[:, :T], take, inner.flops
        )
        dropped += n_drop
        gamma[:, :T] = torch.where(tk, new, gamma[:, :T])
        live = take & (n_iter < budget)
        if prefix is not None:
            hit = take & (n_iter == prefix)
            snap_gamma[hit], snap_act[hit], snapped[hit] = gamma[hit], act[hit], True

    coef = torch.where(act, gamma, 0.0)
    u = torch.zeros(n, m, dtype=wd, device=dev).scatter_add_(1, idx, coef)
    u_prefix = None
    if prefix is not None:  # rows that stopped before their prefix: their final codes
        snap_gamma[~snapped], snap_act[~snapped] = gamma[~snapped], act[~snapped]
        u_prefix = torch.zeros_like(u).scatter_add_(1, idx, torch.where(snap_act, snap_gamma, 0.0))
    flops.add(2.0 * k * A.shape[1])
    return PursuitOutput(u, X - _sparse_rows(idx, coef, m) @ A, n_iter, dropped, flops, u_prefix)


class _Atoms:
    """Inner products between atoms for the pursuit: looked up in the full Gram when there is one, else computed
    from the atoms, with each row's support atoms gathered once as they are selected ([n, k, d_in]). Products are
    charged to `flops`."""

    def __init__(self, atoms: Tensor, gram: Tensor | None, n: int, k: int, flops: Flops) -> None:
        self.atoms, self.gram, self.flops = atoms, gram, flops
        self.support = None if gram is not None else atoms.new_zeros(n, k, atoms.shape[1])

    def add(self, t: int, j: Tensor, take: Tensor) -> None:
        """Record atom j[r] in slot t of the rows that take it."""
        if self.support is not None:
            self.support[:, t] = torch.where(take.unsqueeze(1), self.atoms[j], 0.0)

    def with_new(self, idx: Tensor, j: Tensor, rows: Tensor) -> Tensor:
        """[r, T] inner products ⟨a_{idx[i, s]}, a_{j[i]}⟩ of the T support slots of batch rows `rows` with their
        candidate atoms."""
        if self.gram is not None:
            return self.gram[idx, j.unsqueeze(1)]
        self.flops.add(2.0 * idx.shape[1] * self.atoms.shape[1], rows)
        return torch.bmm(self.support[rows, : idx.shape[1]], self.atoms[j].unsqueeze(2)).squeeze(2)

    def norms_sq(self, j: Tensor) -> Tensor:
        """[n] squared norms ‖a_{j[r]}‖² (1, or 0 for a zero atom)."""
        return self.atoms[j].square().sum(dim=1)

    def correlations(self, x: Tensor, c0: Tensor, idx: Tensor, coef: Tensor, rows: Tensor) -> Tensor:
        """(x − Σ coef_s a_{idx_s}) Aᵀ per row (rows `rows` of the batch): x'Aᵀ − coef G_S with a Gram, else the
        residual times Aᵀ."""
        m, d = self.atoms.shape
        t = idx.shape[1]
        if self.gram is not None and t * GRAM_SUPPORT_RATIO <= d:
            self.flops.add(2.0 * t * m, rows)
            return torch.addmm(c0, _sparse_rows(idx, coef, m), self.gram, alpha=-1)
        self.flops.add(2.0 * t * d + 2.0 * d * m, rows)
        return torch.addmm(x, _sparse_rows(idx, coef, m), self.atoms, alpha=-1) @ self.atoms.T


def _sparse_rows(idx: Int[Tensor, "n T"], values: Float[Tensor, "n T"], m: int) -> Tensor:
    """The [n, m] CSR matrix with values[r, s] at column idx[r, s] (repeated columns add up)."""
    n, T = idx.shape
    crow = torch.arange(0, n * T + 1, T, device=idx.device)
    return csr_tensor(crow, idx.reshape(-1), values.reshape(-1), (n, m))


def pursuit_gram(dictionary: Dictionary, n_rows: int, k: int) -> tuple[Tensor | None, bool]:
    """(the Gram for `nn_omp`, whether to run it compiled): on the CPU with a Gram that fits the compiled solvers'
    budget (`active_set.compiled_gram`: fp64), compiled; else the batched path with `use_gram`'s choice."""
    from saelens_amort.inference.active_set import compiled_gram

    gram64 = compiled_gram(dictionary, dictionary.atoms.device)
    if gram64 is not None:
        return gram64, True
    wd = work_dtype(dictionary.atoms.dtype)
    return (atom_gram(dictionary, wd) if use_gram(dictionary, n_rows, k) else None), False


def use_gram(dictionary: Dictionary, n_rows: int, k: int) -> bool:
    """Build (or reuse) the d_sae² Gram when it is small enough and the batch pays for it."""
    m = dictionary.d_sae
    if m > MAX_GRAM_ATOMS:
        return False
    return has_gram(dictionary, work_dtype(dictionary.atoms.dtype)) or n_rows * k >= m


def _nonnegative_refit(
    prev: Tensor,
    cur: Tensor,
    b: Tensor,
    y: Tensor,
    G_S: Tensor,
    L: Tensor,
    act: Tensor,
    rows_mask: Tensor,
    flops: Flops,
) -> tuple[Tensor, int]:
    """Lawson–Hanson inner loop from the feasible `prev` towards the least-squares `cur`, for rows in `rows_mask`.

    Updates `L` (refactored from the slots' Gram `G_S` on the remaining active slots), `y` = L⁻¹ b, `act` and `b`
    (zeroed on dropped slots) in place for rows whose support shrinks; returns the non-negative coefficients and the
    number of atoms dropped.
    """
    cur = cur.clone()
    prev = prev.clone()
    dropped = 0
    for _ in range(cur.shape[1]):
        neg = act & (cur < 0) & rows_mask.unsqueeze(1)
        bad = neg.any(dim=1).nonzero().squeeze(1)
        if bad.numel() == 0:
            return cur, dropped
        p, q, ng, ab = prev[bad], cur[bad], neg[bad], act[bad]
        ratio = torch.where(ng, p / (p - q), torch.inf)
        alpha = ratio.min(dim=1, keepdim=True).values
        step = p + alpha * (q - p)
        drop = (ng & (ratio <= alpha)) | (ab & (step <= 0))
        ab = ab & ~drop
        step = torch.where(ab, step, 0.0)
        dropped += int(drop.sum())
        act[bad] = ab
        b[bad] = b[bad] * ab
        both = ab.unsqueeze(2) & ab.unsqueeze(1)
        gram = torch.where(both, G_S[bad], 0.0) + torch.diag_embed((~ab).to(b.dtype))
        L_bad = torch.linalg.cholesky(gram)
        w = gram.shape[1]
        flops.add(cholesky(w) + cholesky_solve(w), bad, matmul=False)
        L[bad] = L_bad
        prev[bad] = step
        y_bad = torch.linalg.solve_triangular(L_bad, b[bad].unsqueeze(-1), upper=False)
        y[bad] = y_bad.squeeze(-1)
        cur[bad] = torch.linalg.solve_triangular(L_bad.mT, y_bad, upper=True).squeeze(-1)
    return torch.where(act & (cur < 0), 0.0, cur), dropped


def batch_rows(options: ModeOptions, numbers_per_row: int) -> int:
    """Rows per chunk: the `batch_rows` option, or what keeps a chunk near BATCH_ELEMENTS numbers."""
    rows = options.option("batch_rows")
    if rows is None:
        return max(1, BATCH_ELEMENTS // max(1, numbers_per_row))
    if isinstance(rows, bool) or not isinstance(rows, int) or rows <= 0:
        raise SaeAmortError(f"batch_rows must be a positive integer, got {rows!r}")
    return rows


@torch.no_grad()
def omp_mode(x: Float[Tensor, "N d_in"], dictionary: Dictionary, options: ModeOptions) -> InferenceResult:
    """The "omp" mode: exactly `options.k` selections per row (fewer on early stop); `steps`/`tol` do not apply."""
    k = check_k(options.k, dictionary.d_sae, "omp")
    if options.init is not None and not (isinstance(options.init, str) and options.init == "zero"):
        raise SaeAmortError("mode 'omp' always starts from u = 0; drop init=")
    gram, compiled = pursuit_gram(dictionary, x.shape[0], k)
    rows = batch_rows(options, 3 * dictionary.d_sae + 3 * k * k + (0 if gram is not None else k * dictionary.d_in))
    outs = [nn_omp(dictionary.target(xb), dictionary.atoms, k, gram=gram, compiled=compiled) for xb in x.split(rows)]
    return pursuit_result(outs, dictionary, options, k, OMP_OBJECTIVE)


OMP_OBJECTIVE = "l2 by greedy selection (non-negative OMP, k atoms)"
"""What `info["objective"]` says OMP solved (greedily, not to an optimum)."""


def pursuit_result(outs: list[PursuitOutput], dictionary: Dictionary, options: ModeOptions, k: int,
                   objective: str) -> InferenceResult:
    """One InferenceResult from per-chunk pursuit outputs: SAE-space codes, objective at λ (NaN without one);
    `objective` is what `info["objective"]` says the pursuit solved."""
    dtype = dictionary.atoms.dtype
    if outs:
        u = torch.cat([o.u for o in outs])
        residual = torch.cat([o.residual for o in outs])
        n_iter = torch.cat([o.n_iter for o in outs])
    else:
        wd = work_dtype(dtype)
        u = torch.zeros(0, dictionary.d_sae, dtype=wd, device=dictionary.atoms.device)
        residual = torch.zeros(0, dictionary.d_in, dtype=wd, device=dictionary.atoms.device)
        n_iter = torch.zeros(0, dtype=torch.long, device=dictionary.atoms.device)
    obj = objective_from_residual(residual, u, options.lam)
    info = {
        "objective": objective,
        "k_budget": k,
        "atoms_dropped": sum(o.atoms_dropped for o in outs),
        "stopped_early": int((n_iter < k).sum()),
        **combine([o.flops.info() for o in outs], 0, dictionary.atoms.device),
    }
    return make_result(dictionary.to_sae_codes(u).to(dtype), obj, n_iter=n_iter, lam=options.lam, info=info)


register_mode("omp", omp_mode, needs_lambda=False, needs_k=True, options=("batch_rows",))
