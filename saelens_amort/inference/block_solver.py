"""The inner solver of the working-set lasso: many small non-negative quadratic problems at once.

Per row r of a batch, with the Gram block G_r = A_W A_Wᵀ of its working set W (w atoms) and b_r = c_W − λ:

    min_v  ½ vG_rv − b_r·v ,  v ≥ 0          (= F(u) − ½‖x'‖² for the code u that is v on W and 0 elsewhere)

On a cold block, FISTA_WARMUP steps of FISTA with function restart (step 1/L_W from a power iteration, halved if a
plain step fails to descend) find most of the support, and more than it: FISTA's iterates spread over near-parallel
atoms. Then projected Newton steps: the exact minimiser z of the quadratic on the face S = support ∪ {the largest
KKT violator} (batched Cholesky of G_SS); where z is negative somewhere, the minimiser again on the face without
every atom where it is ≤ 0 (up to DROP_ROUNDS times, from the face's own factor: `_minimiser_without`); the best of
these points (projected onto v ≥ 0) and of the ratio-test point towards z is the step. Newton converges in a few
steps however ill-conditioned the block (trained SAE decoders put near-parallel atoms in one working set: σ(G_W)
spans 10³–10⁵ on the toy SAEs), and it makes the gradient exact, which is what the duality-gap certificate needs;
FISTA alone stalls at the rounding floor of F long before. A Newton step is kept where it lowers F (or, within
rounding of F, the gap); where it does not, the row takes a FISTA step next. A row stops when its block gap ≤ its
target, its iteration budget is spent, or it stalls MAX_STALLS times. Finished rows leave the batch in bulk.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from saelens_amort.inference.flops import Flops, cholesky, cholesky_solve
from saelens_amort.inference.triangular import solve_factored

FISTA_WARMUP = 6
"""FISTA steps before the first Newton step of a cold block solve (they find most of the support)."""

WARM_WARMUP = 2
"""FISTA steps before the first Newton step of a warm block (the previous round's codes plus a few new atoms). Six
there spent the iteration budget of rows with wide supports (toy/gated, L0 ≈ 47: 1.6 % of rows at 200 inner
iterations, 106 on average); two bring in the new atoms as well (62 on average, at most 111, the same time); none
leaves it all to Newton steps, which cost 5–10 FISTA steps each on wide blocks."""

NEWTON_ENTRANTS = 1
"""KKT violators that join the face of a Newton step (the largest ones)."""

DROP_ROUNDS = 3
"""Where the face minimiser z is negative on some atoms, a Newton step also solves on the face without all of them
(and again, up to this many times, while the new minimiser is negative somewhere): the warm-up's supports are too
wide, and the ratio test alone removes one atom per step, as Lawson–Hanson does. toy/gated and toy/standard at their
unamortized λ (L0 ≈ 47 and 35, 2 048 rows, one thread): 70 → 50 and 65 → 42 inner iterations a row, z* 3.8 → 3.1 s
and 2.0 → 1.5 s (best of three), more rows certified (99.90 → 100 %, 99.85 → 100 %); 1, 2, 4 and 8 rounds were
5–10 % slower than 3."""

NOISE = 8
"""F changes within NOISE · eps · ‖x'‖² are rounding: they neither count as descent nor shrink the step."""

MAX_STALLS = 3
"""A row stops after this many consecutive stalls (steps that improve neither F nor, within rounding, the gap)."""

COMPACT_FRACTION = 8
"""Finished rows leave the batch once they are ≥ 1/COMPACT_FRACTION of it."""

FACE_GROUP_RATIO = 1.25
"""Newton faces are factorised in groups of rows whose face sizes lie within this factor (one factorisation at the
batch's widest face costs (widest / own)³ times the FLOPs: 10× and more on the L1-trained toy SAEs)."""

POWER_STEPS = 8
"""Power iterations for L_W = σ_max(G_W) (the estimate is scaled by POWER_MARGIN; failed steps halve the step)."""

POWER_MARGIN = 1.25

BLOCKED = -1e30
"""b on padding slots of a block: v stays 0 there and the slot never enters a support."""


class BlockResult(NamedTuple):
    v: Float[Tensor, "k w"]
    iters: Int[Tensor, " k"]
    restarts: Int[Tensor, " k"]
    flops: Flops
    """Per block row: its [w, w] products (2·w² each), and the Cholesky factorisations and solves of its Newton
    faces."""


def solve_blocks(
    G: Float[Tensor, "k w w"],
    b: Float[Tensor, "k w"],
    v: Float[Tensor, "k w"],
    lam: float,
    xx: Float[Tensor, " k"],
    target: Float[Tensor, " k"],
    budget: Int[Tensor, " k"],
    on_step: Callable[[Tensor, Tensor, Tensor], None] | None = None,
    *,
    warmup: int = FISTA_WARMUP,
) -> BlockResult:
    """Minimise ½ vGv − b·v over v ≥ 0 (b = c_W − λ) per row until the block's duality gap ≤ `target` or `budget`
    iterations (module docstring), starting with `warmup` FISTA steps. Outputs are per block row."""
    k = b.shape[0]
    dev = b.device
    out_v = v.clone()
    out_iters = torch.zeros(k, dtype=torch.long, device=dev)
    out_restarts = torch.zeros(k, dtype=torch.long, device=dev)
    flops = Flops(k, dev)
    if k == 0:
        return BlockResult(out_v, out_iters, out_restarts, flops)
    mv = 2.0 * G.shape[1] * G.shape[2]  # one block product G v
    eps = torch.finfo(b.dtype).eps
    flag = lambda: torch.zeros(k, dtype=torch.bool, device=dev)  # noqa: E731
    count = lambda: torch.zeros(k, dtype=torch.long, device=dev)  # noqa: E731
    st = {
        "G": G, "b": b, "v": v, "xx": xx, "target": target, "budget": budget, "at": torch.arange(k, device=dev),
        "step": 1.0 / (POWER_MARGIN * top_eigenvalue(G)),
        "t": torch.ones(k, dtype=b.dtype, device=dev),
        "plain": ~flag(),  # y == v: the next FISTA step has no momentum
        "iters": count(), "restarts": count(), "stalls": count(),
        "finished": flag(),
        "fista_next": flag(),  # Newton failed: the next step is a FISTA step
        "noise": NOISE * eps * xx,
    }
    flops.add((POWER_STEPS + 2) * mv)  # σ_max by power iteration, and Gv
    st["Gv"] = _bmv(G, v)
    st["F"] = _f(v, st["Gv"], b)
    st["gap"] = block_gap(v, st["Gv"], b, lam, xx)
    st["y"], st["Gy"] = v, st["Gv"]
    round_iter = 0
    while True:
        fin = st["finished"]
        done = ((st["gap"] <= st["target"]) | (st["iters"] >= st["budget"]) | (st["stalls"] >= MAX_STALLS)) & ~fin
        if bool(done.any()):
            sel = done.nonzero().squeeze(1)
            at = st["at"][sel]
            out_v[at], out_iters[at], out_restarts[at] = st["v"][sel], st["iters"][sel], st["restarts"][sel]
            fin = st["finished"] = fin | done
            n_fin = int(fin.sum())
            if n_fin == fin.numel():
                break
            if n_fin * COMPACT_FRACTION >= fin.numel():
                keep = (~fin).nonzero().squeeze(1)
                st = {name: z[keep] for name, z in st.items()}
        live = ~st["finished"]
        round_iter += 1
        newton = live & ~st["fista_next"] if round_iter > warmup else torch.zeros_like(live)
        fista = live & ~newton
        if bool(fista.any()):
            _fista_step(st, fista, lam)
            flops.add(mv, st["at"])  # the step's product runs on every row of the batch
        if bool(newton.any()):
            at = st["at"][newton]
            factor_flops, drop_products, points = _newton_step(st, newton, lam)
            flops.add(points * mv + drop_products, at)  # each candidate point's G v, and the dropped faces' products
            flops.add(factor_flops, at, matmul=False)
        st["iters"] += live
        if on_step is not None:
            at = st["at"][live]
            on_step(at, st["iters"][live], 0.5 * st["xx"][live] + st["F"][live])
    return BlockResult(out_v, out_iters, out_restarts, flops)


def _fista_step(st: dict[str, Tensor], rows: Tensor, lam: float) -> None:
    """One FISTA step with monotone function restart for the rows marked in `rows` (the others are untouched)."""
    G, b, v, Gv, F, y, Gy, t, plain = (st[n] for n in ("G", "b", "v", "Gv", "F", "y", "Gy", "t", "plain"))
    v_new = torch.addcmul(y, st["step"].unsqueeze(1), b - Gy).clamp_(min=0)
    Gv_new = _bmv(G, v_new)
    F_new = _f(v_new, Gv_new, b)
    gap_new = block_gap(v_new, Gv_new, b, lam, st["xx"])
    # Within rounding of F, F cannot tell progress any more: the gap decides (F may then rise by rounding).
    rounding = (F_new - F).abs() <= st["noise"]
    accept = ((F_new <= F) | (rounding & (gap_new < st["gap"]))) & rows
    # A plain proximal-gradient step with a valid step size never raises F: if it did (beyond rounding), L_W was
    # underestimated. A plain step that helps neither F nor the gap is a stall.
    st["step"] = torch.where(plain & ~accept & ~rounding & rows, 0.5 * st["step"], st["step"])
    stalled = plain & rounding & ~accept & rows
    st["stalls"] = torch.where(stalled, st["stalls"] + 1, torch.where(accept, 0, st["stalls"]))
    t_new = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
    beta = torch.where(accept, (t - 1.0) / t_new, 0.0)
    st["t"] = torch.where(rows, torch.where(accept, t_new, 1.0), t)
    st["restarts"] += ~accept & rows
    st["plain"] = torch.where(rows, beta == 0, plain)
    st["fista_next"] = st["fista_next"] & ~rows
    a = accept.unsqueeze(1)
    diff = torch.where(a, v_new - v, 0.0)
    diff_G = torch.where(a, Gv_new - Gv, 0.0)
    st["v"] = v = torch.where(a, v_new, v)
    st["Gv"] = Gv = torch.where(a, Gv_new, Gv)
    st["F"] = torch.where(accept, F_new, F)
    st["gap"] = torch.where(accept, gap_new, st["gap"])
    r = rows.unsqueeze(1)
    bt = beta.unsqueeze(1)
    st["y"] = torch.where(r, torch.addcmul(v, bt, diff), y)
    st["Gy"] = torch.where(r, torch.addcmul(Gv, bt, diff_G), Gy)


def _newton_step(st: dict[str, Tensor], rows: Tensor, lam: float) -> tuple[Tensor, Tensor, int]:
    """One projected Newton step for the rows marked in `rows`: the minimiser z of F on the face S = the support plus
    the largest KKT violator (one entrant at a time, as in Lawson–Hanson, keeps z feasible near the optimum); where z
    is negative somewhere, the minimiser on S without the atoms where z ≤ 0 (DROP_ROUNDS). The step is the best of
    max(z, 0), the ratio-test point (as far towards z as stays feasible; F falls along that segment) and the dropped
    faces' minimisers (max(·, 0)). Kept where it lowers F, or the gap within rounding of F; elsewhere the next step
    is FISTA's. Returns per row the FLOPs of the factorisations and solves and of the dropped faces' products, and
    the number of candidate points (a G v product each)."""
    sel = rows.nonzero().squeeze(1)
    G, b, v, Gv = st["G"][sel], st["b"][sel], st["v"][sel], st["Gv"][sel]
    xx, F, gap, noise = st["xx"][sel], st["F"][sel], st["gap"][sel], st["noise"][sel]
    viol = b - Gv  # > 0: the coordinate wants to enter
    m = min(NEWTON_ENTRANTS, viol.shape[1])
    top = viol.topk(m, dim=1).indices if m > 1 else viol.argmax(dim=1, keepdim=True)
    S = (v > 0) | torch.zeros_like(v, dtype=torch.bool).scatter_(1, top, viol.gather(1, top) > 0)
    z, ok, width, factors = _face_minimiser(G, b, S)
    factor_flops = cholesky(width) + cholesky_solve(width)
    d = torch.where(S & ok.unsqueeze(1), z - v, 0.0)
    tiny = torch.finfo(v.dtype).tiny
    leave = (d < 0) & (v > 0)
    ratio = torch.where(leave, v / (-d).clamp_min(tiny), torch.inf).amin(dim=1).clamp(max=1.0)
    points = [(v + d).clamp_(min=0), (v + ratio.unsqueeze(1) * d).clamp_(min=0)]
    face, z_face, drop_products = S, z, torch.zeros_like(factor_flops)
    drop = ok & (S & (z < 0)).any(dim=1)
    for _ in range(DROP_ROUNDS):
        if not bool(drop.any()):
            break
        face = face & (z_face > 0)
        z_face, ok_face, solves, products = _minimiser_without(factors, z, S & ~face & drop.unsqueeze(1))
        factor_flops, drop_products = factor_flops + solves, drop_products + products
        points.append(torch.where((drop & ok_face).unsqueeze(1), z_face.clamp(min=0), v))
        drop = drop & ok_face & (face & (z_face < 0)).any(dim=1)
    # every candidate's G v in one product: the blocks are read from memory once, not once per candidate
    P = torch.stack(points, dim=1)
    GP = torch.bmm(P, G)  # G is symmetric
    FP = _f(P, GP, b.unsqueeze(1)).nan_to_num_(nan=torch.inf)
    pick = FP.argmin(dim=1, keepdim=True)  # the first of equal ones
    best_v = P.gather(1, pick.unsqueeze(2).expand(-1, 1, P.shape[2])).squeeze(1)
    best_Gv = GP.gather(1, pick.unsqueeze(2).expand(-1, 1, P.shape[2])).squeeze(1)
    best_F = FP.gather(1, pick).squeeze(1)
    best_gap = block_gap(best_v, best_Gv, b, lam, xx)
    accept = ok & (best_F <= F + noise) & ((best_F < F - noise) | (best_gap < gap))
    full = torch.zeros_like(rows)
    full[sel[accept]] = True
    fail = rows & ~full
    a = accept.unsqueeze(1)
    for name, new in (("v", best_v), ("Gv", best_Gv), ("y", best_v), ("Gy", best_Gv)):
        st[name] = st[name].index_put((sel,), torch.where(a, new, st[name][sel]))
    st["F"] = st["F"].index_put((sel,), torch.where(accept, best_F, F))
    st["gap"] = st["gap"].index_put((sel,), torch.where(accept, best_gap, gap))
    st["t"] = torch.where(full, 1.0, st["t"])
    st["plain"] = st["plain"] | full
    st["stalls"] = torch.where(full, 0, st["stalls"] + fail.long())
    st["fista_next"] = (st["fista_next"] & ~rows) | fail
    return factor_flops, drop_products, len(points)


def _face_minimiser(G: Tensor, b: Tensor, S: Tensor) -> tuple[Tensor, Tensor, Tensor, list[tuple[Tensor, ...]]]:
    """Per row, z with G_SS z_S = b_S on the slots S and 0 elsewhere, whether the factorisation succeeded, the width
    its face was factorised at (0 where S is empty: nothing to factorise, z = 0), and the factorisations (per group:
    rows, slot order, valid slots, Cholesky factors, z in slot order) for `_minimiser_without`. Rows are factorised
    in groups of similar face size (within FACE_GROUP_RATIO), each at its group's largest face rather than the
    batch's."""
    k, w = S.shape
    size = S.sum(dim=1)
    z = torch.zeros_like(b)
    ok = torch.ones(k, dtype=torch.bool, device=b.device)
    widths = torch.zeros(k, dtype=torch.float64, device=b.device)
    factors = []
    for rows, width in size_groups(size, FACE_GROUP_RATIO):
        order = torch.argsort((~S[rows]).to(torch.int8), dim=1, stable=True)[:, :width]  # S slots first
        valid = S[rows].gather(1, order)
        o = order.int() if G.numel() < 2**31 else order
        flat = (rows.to(o.dtype) * (w * w)).view(-1, 1, 1) + o.unsqueeze(2) * w + o.unsqueeze(1)
        M = G.reshape(-1).index_select(0, flat.reshape(-1)).view(-1, width, width)
        M.masked_fill_(~(valid.unsqueeze(2) & valid.unsqueeze(1)), 0.0)
        M.diagonal(dim1=1, dim2=2).add_((~valid).to(G.dtype))
        chol, info = torch.linalg.cholesky_ex(M)
        rhs = torch.where(valid, b[rows].gather(1, order), 0.0)
        z_S = torch.where(valid, solve_factored(rhs.unsqueeze(2), chol).squeeze(2), 0.0)
        z[rows] = torch.zeros_like(b[rows]).scatter_(1, order, z_S)
        ok[rows] = info == 0
        widths[rows] = float(width)
        factors.append((rows, order, valid, chol, z_S))
    return z, ok, widths, factors


def _minimiser_without(
    factors: list[tuple[Tensor, ...]], z: Tensor, out: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per row, the minimiser on its face S without the slots `out` (⊂ S), from the face's factor G_SS = LLᵀ instead
    of a new factorisation: with E the identity's columns at `out` and W = L⁻¹E, z' = z − L⁻ᵀW (WᵀW)⁻¹ Eᵀz holds z'
    at 0 on `out` (Lagrange multipliers on those slots; WᵀW = (G_SS⁻¹)_out,out) and solves G z' = b on the rest.
    Costs a forward solve with |out| right-hand sides, a backward one and a |out|-wide Cholesky. Returns z' (z on
    rows with nothing out), whether the small factorisation succeeded, and the FLOPs per row of the solves and of
    the products."""
    z_new = z.clone()
    ok = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
    solves = torch.zeros(z.shape[0], dtype=torch.float64, device=z.device)
    products = torch.zeros_like(solves)
    for rows, order, valid, chol, z_S in factors:
        D = out[rows].gather(1, order) & valid
        count = D.sum(dim=1)
        sub = (count > 0).nonzero().squeeze(1)
        if sub.numel() == 0:
            continue
        at, D, count, width = rows[sub], D[sub], count[sub], order.shape[1]
        p = int(count.max())
        pos = torch.argsort((~D).to(torch.int8), dim=1, stable=True)[:, :p]  # the slots of `out` first
        real = torch.arange(p, device=z.device) < count.unsqueeze(1)
        E = torch.zeros(len(sub), width, p, dtype=z.dtype, device=z.device)
        E.scatter_(1, pos.unsqueeze(1), real.unsqueeze(1).to(z.dtype))
        L, z_sub = chol[sub], z_S[sub]
        W = torch.linalg.solve_triangular(L, E, upper=False)  # L⁻¹E: (G⁻¹)_DD = WᵀW, and G⁻¹E = L⁻ᵀW
        both = real.unsqueeze(2) & real.unsqueeze(1)
        Y_D = torch.where(both, W.mT @ W, torch.eye(p, dtype=z.dtype, device=z.device))
        small, info = torch.linalg.cholesky_ex(Y_D)  # positive definite
        mu = solve_factored(torch.where(real, z_sub.gather(1, pos), 0.0).unsqueeze(2), small)
        shift = torch.linalg.solve_triangular(L.mT, torch.bmm(W, mu), upper=True).squeeze(2)  # G⁻¹E μ
        moved = torch.where(valid[sub] & ~D, z_sub - shift, 0.0)
        z_new[at] = torch.zeros_like(z[at]).scatter_(1, order[sub], moved)
        ok[at] = info == 0
        solves[at] = (p + 1) * width * width + cholesky(p) + cholesky_solve(p)
        products[at] = 2.0 * width * p * (p + 1)  # WᵀW and Wμ
    return z_new, ok, solves, products


def size_groups(size: Int[Tensor, " n"], ratio: float, max_size: int | None = None) -> Iterator[tuple[Tensor, int]]:
    """Indices of the rows with 1 ≤ size ≤ max_size in groups whose sizes lie within a factor `ratio` (one group per
    power of `ratio`), each with the group's largest size: a batched factorisation per group is only as wide as it."""
    ok = (size >= 1) if max_size is None else (size >= 1) & (size <= max_size)
    if not bool(ok.any()):
        return
    level = torch.where(ok, torch.ceil(torch.log(size.clamp_min(1).double()) / math.log(ratio)), -1).long()
    for g in level[ok].unique().tolist():
        rows = (level == g).nonzero().squeeze(1)
        yield rows, int(size[rows].max())


def _bmv(G: Tensor, v: Tensor) -> Tensor:
    return torch.bmm(v.unsqueeze(1), G).squeeze(1)


def _f(v: Tensor, Gv: Tensor, b: Tensor) -> Tensor:
    """½ vGv − b·v = F(v) − ½‖x'‖² on the block (over the last dimension: also for stacked candidate points)."""
    return ((0.5 * Gv - b) * v).sum(dim=-1, dtype=torch.float64)


def block_gap(v: Tensor, Gv: Tensor, b: Tensor, lam: float, xx: Tensor) -> Tensor:
    """The duality gap of the block problem at v, from v, Gv, b = c_W − λ and ‖x'‖² (no residual needed)."""
    vGv = (v * Gv).sum(dim=1).double()
    vc = (v * b).sum(dim=1).double() + lam * v.sum(dim=1).double()
    F = 0.5 * xx + 0.5 * vGv - vc + lam * v.sum(dim=1).double()
    g_max = (b - Gv).amax(dim=1).double() + lam
    return duality_gap(F, xx - vc, xx - 2 * vc + vGv, g_max, lam)


def top_eigenvalue(G: Float[Tensor, "k w w"]) -> Float[Tensor, " k"]:
    """σ_max of each (PSD) block by power iteration from the all-ones vector (an estimate from below)."""
    q = torch.ones(G.shape[0], G.shape[1], dtype=G.dtype, device=G.device)
    for _ in range(POWER_STEPS):
        q = _bmv(G, q)
        q = q / q.norm(dim=1, keepdim=True).clamp_min(torch.finfo(G.dtype).tiny)
    return (q * _bmv(G, q)).sum(dim=1).clamp_min(torch.finfo(G.dtype).tiny)


def duality_gap(F: Tensor, xr: Tensor, rr: Tensor, g_max: Tensor, lam: float) -> Tensor:
    """F − D(s·r) with s = min(1, λ / max_j g_j): the dual point s·r is feasible, so this bounds F − F*."""
    s = torch.where(g_max > lam, lam / g_max, 1.0)
    return F - (s * xr - 0.5 * s * s * rr)


