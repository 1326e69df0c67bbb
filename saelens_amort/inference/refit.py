"""Refit: non-negative least squares on the support a mode chose (debiasing, DESIGN §9).

    γ* = argmin_{γ ≥ 0} ½ ‖x' − γ A_S‖²        S = {j : u_j > 0}, the mode's support per row

`infer(..., refit=True)` replaces any mode's codes by γ* on the mode's own support (zero elsewhere): the shrinkage
of an L1 code, or the magnitude error of an encoder, is removed while the support stays the mode's. L0 never grows
(NNLS may set coefficients to 0), and ½‖x' − uA‖² never rises (the mode's own code is feasible).

Rows are first solved by a primal–dual active-set iteration (a semismooth Newton method; Hintermüller, Ito & Kunisch
2002): from the whole support, each round solves least squares on the passive set P and takes as the next P the atoms
with γ_i − g_i > 0 (g = G γ − b, the gradient); a row is done when its γ is positive on P and g ≥ 0 off P — the KKT
conditions, so γ is the NNLS optimum. Most rows settle in a few rounds (toy/standard's encoder supports, L0 ≈ 35 of
d_in 128, NNLS dropping ~45 % of them: 4.7 rounds on average). The iteration can cycle, so rows still open after
PDAS_ROUNDS go to Lawson–Hanson, which always terminates, batched over rows and warm-started: WARM_STEPS FISTA steps
from the mode's code on its support (step 1/σ_max(A)², safe for every support since A_S is a subset of A's rows) give
a feasible point; its positive set starts the passive set. Each round solves the least-squares problem on the passive
set by a masked Cholesky factorisation (fp64) — if a coefficient is ≤ 0, it moves from the feasible point towards that
solution until the first coefficient reaches 0 and drops it; otherwise it adds back the support atom with the most
positive gradient, until none is positive (the KKT conditions). Rows are sorted by support size and solved in blocks,
so a block's Gram is only as wide as its largest support.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from saelens_amort.inference.flops import Flops, add_info, cholesky, cholesky_solve
from saelens_amort.inference.gram import gram_bytes, padded_gram, sub_gram, work_dtype
from saelens_amort.inference.result import InferenceResult, objective_from_residual
from saelens_amort.inference.sparse_codes import to_csr
from saelens_amort.inference.triangular import solve_factored
from saelens_amort.saes.dictionary import Dictionary

GRAM_BYTES = 1 << 28
"""Largest fp64 atom Gram the support systems are looked up in (256 MiB: d_sae ≈ 5800)."""

BLOCK_ELEMENTS = {"cpu": 2**20, "cuda": 2**24}
"""Rows per block are chosen so one block's support atoms and Gram stay near this many numbers, by device type. On
the CPU small blocks are faster and lighter: the solves copy a block's Gram about six times, and blocks that fit the
caches run faster (toy/gated's encoder codes, 2 048 rows, one thread: 0.6 s and +80 MB at 2**20 against 1.2–1.7 s
and +360 MB at 2**24; toy/standard 0.35 s against 0.5–0.65 s; equal codes)."""

KKT_TOL = 1000
"""An atom re-enters the passive set when its gradient exceeds KKT_TOL · eps · support size · max|A_S x'|."""

RIDGE = 1e-10
"""A row whose support Gram is singular (more atoms than dimensions) is solved with this relative ridge added."""

WARM_STEPS = 200
"""FISTA steps on the support before the Lawson–Hanson rounds."""

PDAS_ROUNDS = 15
"""Primal–dual active-set rounds before a row is handed to Lawson–Hanson."""

OBJECTIVE = "l2 (NNLS) on the mode's support"
"""What `info["objective"]` says a refitted row solved."""


def support_of(u: Float[Tensor, "n m"], width: int) -> tuple[Int[Tensor, "n T"], Float[Tensor, "n T"]]:
    """The `width` largest entries of each row as slot indices and values (slots past a row's support hold 0)."""
    width = max(1, min(width, u.shape[1]))
    top = u.topk(width, dim=1)
    return top.indices, top.values.clamp_min(0)


class SupportSystems:
    """Normal equations of least squares on per-row supports, in fp64: G_S = A_S A_Sᵀ and b_S = A_S x'.

    Inactive slots get the identity in G_S and 0 in b_S, so a solve on the active slots needs no further masking.
    Looked up in the dictionary's cached fp64 Gram padded with an identity block (`padded_gram`: inactive slot s
    reads "atom" d_sae + s, so one gather builds the masked system) and in x'Aᵀ when the Gram is at most GRAM_BYTES,
    else computed from the support atoms. Products are charged to `flops` (rows of x').
    """

    def __init__(self, x_target: Float[Tensor, "n d_in"], dictionary: Dictionary, flops: Flops) -> None:
        m = dictionary.d_sae
        self.x, self.flops, self.m, self.dictionary = x_target.double(), flops, m, dictionary
        self.use_gram = gram_bytes(m, torch.float64) <= GRAM_BYTES
        if self.use_gram:
            self.c = self.x @ dictionary.atoms.double().T
            flops.add(2.0 * dictionary.d_in * m)
        else:
            self.atoms = dictionary.atoms.double()

    def __call__(self, rows: Tensor, idx: Int[Tensor, "r T"], active: Bool[Tensor, "r T"]) -> tuple[Tensor, Tensor]:
        """(G_S [r, T, T], b_S [r, T]) for rows `rows` of x' and their support slots (identity / 0 on inactive
        slots)."""
        T = idx.shape[1]
        if self.use_gram:
            m = self.m
            slot = torch.where(active, idx, m + torch.arange(T, device=idx.device))
            return (sub_gram(padded_gram(self.dictionary, torch.float64, T), slot),
                    torch.where(active, self.c[rows.unsqueeze(1), idx], 0.0))
        A_S = self.atoms[idx] * active.unsqueeze(2).to(self.atoms.dtype)
        d = A_S.shape[2]
        self.flops.add(2.0 * T * T * d + 2.0 * T * d, rows)
        G = torch.baddbmm(torch.diag_embed((~active).to(A_S.dtype)), A_S, A_S.transpose(1, 2))
        return G, torch.bmm(A_S, self.x[rows].unsqueeze(2)).squeeze(2)


def masked_cholesky_solve(
    gram: Float[Tensor, "n T T"], b: Float[Tensor, "n T"], active: Bool[Tensor, "n T"], flops: Flops, rows: Tensor,
    *, masked: bool = False,
) -> tuple[Float[Tensor, "n T"], Bool[Tensor, " n"]]:
    """Least squares on the active slots: G_PP γ_P = b_P (γ = 0 elsewhere), and which rows needed the ridge; the
    factorisations and solves are charged to `rows` of `flops`. `masked`: `gram` already holds the identity off the
    active block (as SupportSystems returns it for these slots)."""
    if masked:
        gm = gram
    else:
        gm = gram * (active.unsqueeze(2) & active.unsqueeze(1))
        gm.diagonal(dim1=1, dim2=2).add_(~active)
    chol, info = torch.linalg.cholesky_ex(gm)
    singular = info != 0
    if bool(singular.any()):
        bad = singular.nonzero().squeeze(1)
        eye = torch.eye(gram.shape[1], dtype=gram.dtype, device=gram.device)
        scale = gm[bad].diagonal(dim1=1, dim2=2).amax(dim=1).clamp_min(1.0)
        chol[bad] = torch.linalg.cholesky(gm[bad] + RIDGE * scale[:, None, None] * eye)
        flops.add(cholesky(gram.shape[1]), rows[bad], matmul=False)
    gamma = solve_factored((b * active).unsqueeze(-1), chol).squeeze(-1)
    flops.add(cholesky(gram.shape[1]) + cholesky_solve(gram.shape[1]), rows, matmul=False)
    return torch.where(active, gamma, 0.0), singular


@torch.no_grad()
def nnls(
    gram: Float[Tensor, "n T T"],
    b: Float[Tensor, "n T"],
    valid: Bool[Tensor, "n T"],
    start: Float[Tensor, "n T"],
    lipschitz: float,
    flops: Flops,
) -> tuple[Float[Tensor, "n T"], Int[Tensor, " n"]]:
    """Batched NNLS min_{γ ≥ 0, γ = 0 off `valid`} ½γᵀGγ − bᵀγ, from `start` (≥ 0 on `valid`).

    `lipschitz` bounds every row's largest eigenvalue of G (σ_max(A)² does, for supports of A's rows). Returns γ
    and the rounds each row took (active-set, then Lawson–Hanson); the work is charged to `flops` (one entry per row).
    """
    n, T = b.shape
    tol = KKT_TOL * torch.finfo(b.dtype).eps * max(T, 1) * (b * valid).abs().amax(dim=1).clamp_min(1e-300)
    out, rounds, todo = _primal_dual_active_set(gram, b, valid, tol, flops)
    start = start.clone()
    start[todo] = _accelerated_projected_gradient(gram[todo], b[todo], valid[todo], start[todo], lipschitz)
    flops.add(WARM_STEPS * 2.0 * T * T, todo)
    passive = valid & (start > 0)
    prev = torch.where(passive, start, 0.0)
    for _ in range(3 * T + 5):
        if todo.numel() == 0:
            break
        G, bb, ok, P, p = gram[todo], b[todo], valid[todo], passive[todo], prev[todo]
        rounds[todo] += 1
        gamma, _ = masked_cholesky_solve(G, bb, P, flops, todo)
        neg = P & (gamma <= 0)
        has_neg = neg.any(dim=1)
        # rows with a non-positive coefficient: move from p towards γ until the first one reaches 0, drop it
        ratio = torch.where(neg, p / (p - gamma).clamp_min(torch.finfo(p.dtype).tiny), torch.inf)
        alpha = ratio.amin(dim=1, keepdim=True).clamp(0, 1)
        step = p + alpha * (gamma - p)
        drop = P & ((neg & (ratio <= alpha)) | (step <= 0))
        moved_P = P & ~drop
        moved = torch.where(moved_P, step, 0.0)
        # rows whose solution is positive: add the support atom with the largest positive gradient, if any
        grad = bb - (G @ gamma.unsqueeze(-1)).squeeze(-1)
        flops.add(2.0 * T * T, todo)
        grad = torch.where(ok & ~P, grad, -torch.inf)
        g_max, j = grad.max(dim=1)
        add = ~has_neg & (g_max > tol[todo])
        grown_P = P | (torch.nn.functional.one_hot(j, T).bool() & add.unsqueeze(1))
        P = torch.where(has_neg.unsqueeze(1), moved_P, grown_P)
        p = torch.where(has_neg.unsqueeze(1), moved, gamma)
        passive[todo], prev[todo] = P, p
        done = ~has_neg & ~add
        out[todo[done]] = gamma[done]
        todo = todo[~done]
    if todo.numel():  # round cap reached (rounding cycles): keep the last feasible point
        out[todo] = prev[todo]
    return out, rounds


def _primal_dual_active_set(
    gram: Tensor, b: Tensor, valid: Tensor, tol: Tensor, flops: Flops
) -> tuple[Tensor, Tensor, Tensor]:
    """PDAS_ROUNDS of the primal–dual active-set iteration from the whole support (module docstring): γ for the rows
    that met the KKT conditions (0 for the others), the rounds each row took, and the rows still open."""
    n = b.shape[0]
    out = torch.zeros_like(b)
    rounds = torch.zeros(n, dtype=torch.long, device=b.device)
    todo = torch.arange(n, device=b.device)
    passive = valid.clone()
    T = b.shape[1]
    for _ in range(PDAS_ROUNDS):
        G, bb, P, ok = gram[todo], b[todo], passive[todo], valid[todo]
        # solve on the passive slots moved to the front: a factorisation as wide as the largest passive set
        width = max(int(P.sum(dim=1).max()), 1)
        front = torch.argsort((~P).to(torch.int8), dim=1, stable=True)[:, :width]
        flat = (torch.arange(todo.numel(), device=b.device) * T * T)[:, None, None] + front[:, :, None] * T \
            + front[:, None, :]
        G_P = G.reshape(-1).index_select(0, flat.view(-1)).view(-1, width, width)
        gamma_P, singular = masked_cholesky_solve(G_P, bb.gather(1, front), P.gather(1, front), flops, todo)
        gamma = torch.zeros_like(bb).scatter_(1, front, gamma_P)
        grad = (G @ gamma.unsqueeze(-1)).squeeze(-1) - bb
        flops.add(2.0 * T * T, todo)
        rounds[todo] += 1
        kkt = ~(P & (gamma <= 0)).any(dim=1) & ~(ok & ~P & (grad < -tol[todo, None])).any(dim=1) & ~singular
        out[todo[kkt]] = gamma[kkt]
        passive[todo] = ok & (gamma - grad > 0)
        todo = todo[~kkt]
        if todo.numel() == 0:
            break
    return out, rounds, todo


def _accelerated_projected_gradient(G: Tensor, b: Tensor, valid: Tensor, start: Tensor, lipschitz: float) -> Tensor:
    """WARM_STEPS of FISTA on the NNLS problem: a feasible point whose positive set is usually the optimum's, so
    Lawson–Hanson then needs few rounds (from the whole support it drops one atom per round)."""
    step = 1.0 / lipschitz if lipschitz > 0 else 0.0
    u = y = torch.where(valid, start, 0.0)
    t = 1.0
    for _ in range(WARM_STEPS):
        grad = (G @ y.unsqueeze(-1)).squeeze(-1) - b
        u_new = torch.where(valid, (y - step * grad).clamp_min(0), 0.0)
        t_new = 0.5 * (1 + (1 + 4 * t * t) ** 0.5)
        y = u_new + ((t - 1) / t_new) * (u_new - u)
        u, t = u_new, t_new
    return u


def size_blocks(
    sizes: Int[Tensor, " n"], per_row: int, per_slot: int, budget: int | None = None
) -> Iterator[tuple[Tensor, int]]:
    """Row indices in blocks of similar size, each with its width (the block's largest size, ≥ 1).

    Rows are sorted by `sizes`; a block's width is at most twice its smallest size, and rows × (per_row + width ×
    (per_slot + width)) numbers stay near `budget` (a width × width Gram per row included; default: BLOCK_ELEMENTS
    of the sizes' device).
    """
    budget = BLOCK_ELEMENTS.get(sizes.device.type, BLOCK_ELEMENTS["cuda"]) if budget is None else budget
    order = torch.argsort(sizes, stable=True)
    s = [max(v, 1) for v in sizes[order].tolist()]
    i, n = 0, len(s)
    while i < n:
        j = i + 1
        while j < n and s[j] <= 2 * s[i] and (j + 1 - i) * (per_row + s[j] * (per_slot + s[j])) <= budget:
            j += 1
        yield order[i:j], s[j - 1]
        i = j


@torch.no_grad()
def refit_codes(
    x_target: Float[Tensor, "n d_in"], u: Float[Tensor, "n m"], dictionary: Dictionary, flops: Flops | None = None
) -> Tensor:
    """NNLS on the support of each row of unit-atom codes `u` (fp64 solve; returned in u's dtype); the work is
    charged to `flops` when given."""
    flops = Flops(u.shape[0], u.device) if flops is None else flops
    out = torch.zeros_like(u)
    sizes = (u > 0).sum(dim=1)
    systems = SupportSystems(x_target, dictionary, flops)
    for rows, width in size_blocks(sizes, 2 * u.shape[1], 2):
        idx, val = support_of(u[rows].double(), width)
        valid = val > 0
        gram, b = systems(rows, idx, valid)
        block = Flops(rows.numel(), u.device)
        gamma, _ = nnls(gram, b, valid, val, dictionary.lipschitz, block)
        flops.absorb(block, rows)
        out[rows] = torch.zeros_like(u[rows]).scatter_(1, idx, gamma.to(u.dtype))
    return out


@torch.no_grad()
def refit_result(result: InferenceResult, x: Float[Tensor, "n d_in"], dictionary: Dictionary) -> InferenceResult:
    """`result` with its codes replaced by NNLS on their support; objective re-measured at the result's λ."""
    x_target = dictionary.target(x)
    u = dictionary.from_sae_codes(result.codes.to(dictionary.atoms.dtype))
    flops = Flops(u.shape[0], u.device)
    refit = refit_codes(x_target, u, dictionary, flops)
    wd = work_dtype(dictionary.atoms.dtype)  # bf16 / fp16 SAEs: the product in fp32 (no sparse bf16 kernels on CPU)
    codes = to_csr(refit.to(wd))
    flops.product(codes, dictionary.d_in)
    residual = x_target.float() - (codes @ dictionary.atoms.to(wd)).float()
    info = {
        **add_info(result.info, flops.info()),
        "objective": OBJECTIVE,
        "refit": {"of": result.mode, "atoms_dropped": int(((u > 0) & (refit <= 0)).sum())},
    }
    return result._replace(
        codes=dictionary.to_sae_codes(refit).to(result.codes.dtype),
        objective=objective_from_residual(residual, refit, result.lam),
        info=info,
    )

