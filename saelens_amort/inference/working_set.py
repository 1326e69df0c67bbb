"""Working-set solver for the non-negative lasso, certified by a duality gap (the default for unamortized and semi).

    min_u  F(u) = ½ ‖x' − u A‖² + λ ‖u‖₁ ,  u ≥ 0          (unit atoms A [d_sae, d_in], one problem per row)

Dense FISTA pays two [N, d_sae] products per iteration although the codes have ~L0 non-zeros. Here each row solves
a small problem on its own working set W and touches the full dictionary only to check optimality:

1. c = x'Aᵀ once: the one dense product (one encoder pass).
2. W = the w atoms with the largest c (from zero), or the warm start's support plus the largest gradients.
3. Solve on W (`block_solver.solve_blocks`: FISTA + Newton on the per-row Gram block G_W, gathered from the cached
   Gram G = AAᵀ, or A_W A_Wᵀ without it) until the block's duality gap ≤ ½ tol · F.
4. Certificate: residual r = x' − uA (sparse u), full gradient g = rAᵀ = c − uG (sparse u times G, or a dense rAᵀ
   without it), and the dual point θ = s·r with s = min(1, λ / max_j g_j), feasible for the full problem (every
   ⟨a_j, θ⟩ ≤ λ). gap = F(u) − D(θ), D(θ) = ½‖x'‖² − ½‖x' − θ‖², bounds F(u) − F* from above: a row stops when
   gap ≤ tol · F(u), so its objective is provably within tol of the optimum of the *full* problem.
5. Otherwise the largest KKT violators (g_j > λ outside W; at most max(4, w/2) per round) replace atoms of W not in
   the support (W grows only when it is full), only their rows of G_W are recomputed, and the row goes back to 3,
   warm.

On random-like dictionaries the support is not the top of c (weak atoms hide behind strong ones), so the first
certificate typically finds a few violators per row and the second certifies the optimum: two rounds.

Precision. Trained decoders put near-parallel atoms in one working set (σ(G_W) spans 10³–10⁵ on the toy SAEs): an
fp32 Cholesky of such a face loses most of its digits, so Newton steps fail and rows stall short of the certificate,
and an fp32 gradient c − uG carries rounding comparable to the λ·tol the certificate must resolve. So the blocks are
always solved in fp64 (they are small), the dense products stay in the work dtype, and the rows an fp32 pass (which
spends at most 1 − FINE_SHARE of the budget) leaves uncertified are solved again in fp64 from their fp32 codes, with
gradients rAᵀ from the atoms (no fp64 Gram is built): only the few hard rows pay for fp64 dense products.
`converged` is then the fp64 certificate.

Monotone: inner steps never raise F beyond rounding and changing W leaves u as it is. In fp64 (one pass) the
trajectory does not depend on the iteration budget, so a semi-amortized run with K steps is a prefix of the run
with K+1; in fp32 the split of the budget between the passes depends on it. `n_iter`
counts inner iterations (Newton steps included); each round adds one sparse product with G (or a dense rAᵀ).

Memory (N rows per batch, w atoms per working set, work dtype): c and g, 2·N·d_sae numbers; the blocks, N·w²; the
optional Gram, d_sae² (`gram.py`); without a Gram also the gathered atoms of every working set, N·w·d_in.
"""

from __future__ import annotations


import torch
from jaxtyping import Float, Int
from torch import Tensor

from saelens_amort.inference.block_solver import (
    BLOCKED,
    FISTA_WARMUP,
    WARM_WARMUP,
    NOISE,
    duality_gap,
    solve_blocks,
)
from saelens_amort.inference.flops import Flops
from saelens_amort.inference.gram import flat_gather, work_dtype
from saelens_amort.inference.result import SolveOutput
from saelens_amort.inference.sparse_codes import row_sums, sparse_rows, to_csr
from saelens_amort.inference.solve_trace import SolveTrace, trace_hook
from saelens_amort.inference.threads import intra_op_threads

DEFAULT_WS_SIZE = 64
"""Atoms per working set in the first round (and the least it ever holds), at most; see `default_ws_size`."""

MAX_ROUNDS = 64
"""Certificates per row before giving up on it (it is then `converged=False`)."""

INNER_SLACK = 0.5
"""Blocks are solved to a gap ≤ INNER_SLACK · tol · F, leaving room for the full gap to pass tol."""

FLOOR = 16
"""Gaps below FLOOR · eps · ‖x'‖² are rounding noise: the row is at its optimum in the work dtype."""

GAP_PROGRESS = 0.999
"""A row whose round lowers F only within rounding must shrink its gap at all (by this factor) to go on."""

NEW_PER_ROUND = 0.5
"""At most NEW_PER_ROUND · ws_size KKT violators (and at least 4) join a row's working set per round."""

GROW_MIN = 1
"""A row with violators always gets at least this many per round, growing W if it has no free slot."""

GROW_MARGIN = 8
"""When a row's support plus its violators overflow W, W grows by this many slots beyond what it needs."""

FINE_DTYPE = torch.float64
"""The blocks (G_W, c_W − λ, v) are always solved in this dtype, and rows an fp32 pass leaves uncertified are solved
again in it (module docstring). The blocks are small ([rows, w, w]): fp64 costs about what fp32 does there."""

FINE_SHARE = 0.25
"""The share of a row's iteration budget an fp32 pass leaves to the fp64 pass: a row whose fp32 certificate is
rounding noise can still lower F a little each round and would otherwise spend its whole budget there."""

INNER_THREADS = 1
"""CPU threads for the block solves: their tensors are small ([rows, w]); with more threads each of their hundreds
of tiny ops waits on a barrier, milliseconds apiece when other processes share the cores."""


def default_ws_size(d_in: int) -> int:
    """d_in / 8 atoms, within [16, DEFAULT_WS_SIZE]: a working set much wider than that packs near-parallel atoms of
    a trained decoder into one block, and its Newton steps slow down (measured on the toy SAEs, d_in = 128)."""
    return max(16, min(DEFAULT_WS_SIZE, d_in // 8))


@torch.no_grad()
def solve_working_set(
    x_target: Float[Tensor, "N d_in"],
    atoms: Float[Tensor, "d_sae d_in"],
    lam: float,
    *,
    gram: Float[Tensor, "d_sae d_sae"] | None = None,
    u0: Float[Tensor, "N d_sae"] | None = None,
    max_iter: int = 200,
    tol: float = 1e-4,
    ws_size: int = DEFAULT_WS_SIZE,
    return_trace: bool = False,
) -> SolveOutput:
    """Solve the non-negative lasso for every row of `x_target` (one batch) to relative duality gap ≤ `tol`.

    `gram` is AAᵀ (None: blocks and gradients come from the atoms); `u0` a warm start; `max_iter` caps the inner
    iterations per row. `objective` is F at the returned codes, from their residual.
    """
    trace = SolveTrace(x_target.shape[0], x_target.device) if return_trace else None
    wd = work_dtype(atoms.dtype)
    first_budget = max_iter if wd == FINE_DTYPE else max_iter - int(FINE_SHARE * max_iter)
    run = _solve(x_target, atoms, lam, gram, u0, wd, first_budget, tol, ws_size, trace)
    # Rows the work dtype leaves uncertified go again in fp64 with the rest of the budget, from their codes.
    redo = (~run.converged & (run.n_iter < max_iter)).nonzero().squeeze(1)
    if wd != FINE_DTYPE and redo.numel():
        fine = _solve(
            x_target[redo], atoms, lam, None, run.u[redo], FINE_DTYPE, max_iter, tol, ws_size, trace,
            n_iter=run.n_iter[redo], out_rows=redo,
        )
        run.u[redo] = fine.u.to(run.u.dtype)
        for name in ("n_iter", "converged", "objective"):
            getattr(run, name)[redo] = getattr(fine, name)
        run.restarts[redo] += fine.restarts
        run.flops.absorb(fine.flops, redo)
    return run.output(atoms.dtype)


def continue_fine(x_target: Tensor, atoms: Tensor, lam: float, u0: Tensor, max_iter: int, tol: float, ws_size: int,
                  spent: Tensor) -> SolveOutput:
    """Rows another solver left uncertified, on and on from their codes `u0` in fp64, `spent` iterations spent."""
    return _solve(x_target, atoms, lam, None, u0, FINE_DTYPE, max_iter, tol, ws_size, None, n_iter=spent).output(
        atoms.dtype)


def _solve(
    x_target: Tensor, atoms: Tensor, lam: float, gram: Tensor | None, u0: Tensor | None, wd: torch.dtype,
    max_iter: int, tol: float, ws_size: int, trace: "SolveTrace | None", *, n_iter: Tensor | None = None,
    out_rows: Tensor | None = None,
) -> "_Run":
    """One pass over the batch in dtype `wd` (from zero or from u0); `n_iter` counts iterations already spent, and
    `out_rows` maps the batch's rows to the trace's."""
    x = x_target.to(wd)
    n = x.shape[0]
    ops = _Ops(atoms.to(wd), None if gram is None else gram.to(wd))
    c = x @ ops.atoms.T
    xx = x.double().square().sum(dim=1)
    run = _Run(x, c, xx, lam, ops, tol=tol, max_iter=max_iter, ws_size=ws_size, trace=trace, out_rows=out_rows)
    run.flops.product(x, c.shape[1])
    if n_iter is not None:
        run.n_iter += n_iter
    if u0 is None:
        cert = _certificate(x, c, None, xx, lam, ops, run.flops)
        run.rounds(torch.arange(n, device=x.device), cert, cert.g, 0)
    else:
        run.u = u0.to(wd).clamp_min(0)
        cert = _certificate(x, c, to_csr(run.u), xx, lam, ops, run.flops)
        support = run.u > 0
        score = cert.g.masked_fill_(support, torch.inf)  # cert.g is fresh here (c − u0 G)
        # Rows are solved in groups of similar support size, so that one wide code does not widen every block.
        counts = support.sum(dim=1)
        ladder = torch.ceil(torch.log2((counts + ws_size // 2).clamp_min(ws_size) / ws_size)).long()
        for level in torch.unique(ladder).tolist():
            rows = (ladder == level).nonzero().squeeze(1)
            run.rounds(rows, cert.select(rows), score[rows], int(counts[rows].max()))
    return run


class _Run:
    """The state of one batch: codes u (dense), per-row counters, and the rounds that update them."""

    def __init__(
        self, x: Tensor, c: Tensor, xx: Tensor, lam: float, ops: "_Ops", *, tol: float, max_iter: int, ws_size: int,
        trace: "SolveTrace | None", out_rows: Tensor | None = None,
    ) -> None:
        n, m = c.shape
        dev = x.device
        self.x, self.c, self.xx, self.lam, self.ops = x, c, xx, lam, ops
        self.tol, self.max_iter, self.ws_size = tol, max_iter, ws_size
        self.eps = torch.finfo(x.dtype).eps
        self.floor = FLOOR * self.eps * xx
        self.u = torch.zeros(n, m, dtype=x.dtype, device=dev)
        self.n_iter = torch.zeros(n, dtype=torch.long, device=dev)
        self.restarts = torch.zeros(n, dtype=torch.long, device=dev)
        self.converged = torch.zeros(n, dtype=torch.bool, device=dev)
        self.objective = torch.zeros(n, dtype=torch.float64, device=dev)
        self.trace = trace
        self.out_rows = out_rows
        self.flops = Flops(n, dev)

    def rounds(self, rows: Tensor, cert: "_Certificate", score: Tensor, s_max: int) -> None:
        """Working-set rounds for `rows` (their certificate `cert`, first-round scores `score`: +inf on the
        support, else the gradient) until each is certified, out of budget, or stuck."""
        u, c, xx, lam, ops, m = self.u, self.c, self.xx, self.lam, self.ops, self.c.shape[1]
        ws: _WorkingSets | None = None
        F_prev = gap_prev = cert.F  # set each round; read from the second on
        for _ in range(MAX_ROUNDS):
            self.objective[rows] = cert.F
            if self.trace is not None:
                self.trace.record(self._traced(rows), self.n_iter[rows], cert.F)
            ok = cert.gap <= torch.maximum(self.tol * cert.F, self.floor[rows])
            self.converged[rows] = ok
            live = ~ok & (self.n_iter[rows] < self.max_iter)
            if ws is not None:  # a round that lowered neither F (beyond rounding) nor the gap would repeat itself
                live &= (cert.F < F_prev - NOISE * self.eps * xx[rows]) | (cert.gap < GAP_PROGRESS * gap_prev)
            if not bool(live.any()):
                return
            if not bool(live.all()):
                keep = live.nonzero().squeeze(1)
                rows, cert = rows[keep], cert.select(keep)
                ws = ws.select(keep) if ws is not None else None
                score = score[keep] if ws is None else None
            warmup = FISTA_WARMUP if ws is None else WARM_WARMUP
            if ws is None:  # first round: the support (score +inf) and the largest gradients
                w = min(m, max(self.ws_size, s_max + self.ws_size // 2))
                idx = score.topk(w, dim=1, sorted=False).indices
                ws = _WorkingSets.build(idx, flat_gather(u, rows, idx), flat_gather(c, rows, idx) - lam, ops)
                if ws.A_W is not None:  # A_W A_Wᵀ
                    self.flops.add(2.0 * w * w * ops.atoms.shape[1], rows)
            else:
                p_new = ws.add_violators(cert.g, lam, c, rows, ops, max(4, int(NEW_PER_ROUND * self.ws_size)))
                if ws.A_W is not None:  # the new atoms' rows of A_W A_Wᵀ
                    self.flops.add(2.0 * p_new * ws.idx.shape[1] * ops.atoms.shape[1], rows)
            score = None
            target = torch.maximum(INNER_SLACK * self.tol * cert.F, self.floor[rows])
            F_prev, gap_prev = cert.F, cert.gap
            on_step = None if self.trace is None else trace_hook(self.trace, self._traced(rows), self.n_iter[rows])
            with intra_op_threads(INNER_THREADS if u.device.type == "cpu" else None):
                budget = self.max_iter - self.n_iter[rows]
                inner = solve_blocks(ws.G, ws.b, ws.v, lam, xx[rows], target, budget, on_step, warmup=warmup)
            ws.v = inner.v
            self.flops.absorb(inner.flops, rows)
            v_wd = ws.v.to(u.dtype)
            real = ws.b > BLOCKED  # padding slots alias atom 0: never write them
            u.view(-1).index_put_((((rows * m).unsqueeze(1) + ws.idx)[real],), v_wd[real])
            self.n_iter[rows] += inner.iters
            self.restarts[rows] += inner.restarts
            codes = sparse_rows(ws.idx, v_wd, m)
            cert = _certificate(_rows(self.x, rows), _rows(c, rows), codes, xx[rows], lam, ops, self.flops, rows)
        self.objective[rows] = cert.F
        self.converged[rows] = cert.gap <= torch.maximum(self.tol * cert.F, self.floor[rows])

    def _traced(self, rows: Tensor) -> Tensor:
        return rows if self.out_rows is None else self.out_rows[rows]

    def output(self, dtype: torch.dtype) -> SolveOutput:
        return SolveOutput(
            u=self.u.to(dtype),
            n_iter=self.n_iter,
            objective=self.objective.to(torch.promote_types(dtype, torch.float32)),
            converged=self.converged,
            restarts=self.restarts,
            trace=self.trace.stack() if self.trace is not None else None,
            flops=self.flops,
        )


class _Ops:
    """The products the solver needs, through the cached Gram when there is one. Codes come as CSR rows (CPU) or
    dense rows (elsewhere); None means all zero."""

    def __init__(self, atoms: Tensor, gram: Tensor | None) -> None:
        self.atoms, self.gram = atoms, gram

    def gradient(self, c: Tensor, u: Tensor, residual: Tensor) -> Tensor:
        """g = rAᵀ = c − uG (a fresh tensor)."""
        if self.gram is None:
            return residual @ self.atoms.T
        return torch.addmm(c, u, self.gram, alpha=-1)

    def cross(self, a_idx: Int[Tensor, "k p"], b_idx: Int[Tensor, "k w"]) -> Float[Tensor, "k p w"]:
        """⟨a_i, a_j⟩ for i in a_idx[r], j in b_idx[r] (from the Gram; callers without one use atom rows)."""
        m = self.gram.shape[0]
        if m * m < 2**31:  # half the index memory
            a_idx, b_idx = a_idx.int(), b_idx.int()
        flat = (a_idx.unsqueeze(2) * m + b_idx.unsqueeze(1)).reshape(-1)
        return self.gram.view(-1).index_select(0, flat).view(*a_idx.shape, b_idx.shape[1])


class _WorkingSets:
    """Per row: atom indices idx [k, w], codes v there, b = c_W − λ (BLOCKED on padding slots), the Gram block G,
    and without a Gram the gathered atoms A_W [k, w, d_in] (to update blocks without gathering them again)."""

    def __init__(self, idx: Tensor, v: Tensor, b: Tensor, G: Tensor, A_W: Tensor | None) -> None:
        self.idx, self.v, self.b, self.G, self.A_W = idx, v, b, G, A_W

    @classmethod
    def build(cls, idx: Tensor, v: Tensor, b: Tensor, ops: _Ops) -> "_WorkingSets":
        v, b = v.to(FINE_DTYPE), b.to(FINE_DTYPE)
        if ops.gram is not None:
            return cls(idx, v, b, ops.cross(idx, idx).to(FINE_DTYPE), None)
        k, w = idx.shape
        A_W = ops.atoms.index_select(0, idx.reshape(-1)).view(k, w, ops.atoms.shape[1])
        return cls(idx, v, b, torch.bmm(A_W, A_W.transpose(1, 2)).to(FINE_DTYPE), A_W)

    def select(self, keep: Tensor) -> "_WorkingSets":
        A_W = None if self.A_W is None else self.A_W[keep]
        return _WorkingSets(self.idx[keep], self.v[keep], self.b[keep], self.G[keep], A_W)

    def add_violators(self, g: Tensor, lam: float, c: Tensor, rows: Tensor, ops: _Ops, max_new: int) -> int:
        """Put each row's largest KKT violators (g_j > λ, j ∉ W; at most `max_new`) into slots outside its support;
        returns how many new-atom slots each row's block rows were recomputed for."""
        k, w = self.idx.shape
        # Atoms of W are settled by the block solve; padding slots (atom 0, b = BLOCKED) must not hide atom 0.
        hide = torch.where(self.b > BLOCKED, -torch.inf, torch.inf).to(g.dtype)
        g.scatter_reduce_(1, self.idx, hide, reduce="amin")
        free = self.v <= 0
        n_free = free.sum(dim=1)
        # At most max_new per row, and no more than its free slots (at least GROW_MIN): growing copies every block
        # (and the gathered atoms), so it waits until a row has no room left at all.
        counts = torch.count_nonzero(g > lam, dim=1).clamp_(max=max_new)
        counts = torch.minimum(counts, n_free.clamp(min=GROW_MIN))
        p = int(counts.max()) if k else 0
        if p == 0:
            return 0
        top = g.topk(p, dim=1, sorted=True)
        need = int((counts + w - n_free).max())
        if need > w:
            self._grow(min(need + GROW_MARGIN, c.shape[1]) - w)
            free = self.v <= 0
            k, w = self.idx.shape
        # The a-th free slot (in slot order) of a row receives its a-th violator.
        rank = torch.cumsum(free, dim=1) - 1
        take = free & (rank < counts.unsqueeze(1))
        slot_atom = top.indices.gather(1, rank.clamp(0, p - 1))
        self.idx = torch.where(take, slot_atom, self.idx)
        self.b = torch.where(take, flat_gather(c, rows, self.idx) - lam, self.b)
        self.v = torch.where(take, 0.0, self.v)
        # Slots of the new atoms, padded with a row's first new slot (rewriting it is harmless); rows with none keep
        # slot 0 and write back what is there.
        order = torch.argsort((~take).to(torch.int8), dim=1, stable=True)[:, :p]
        has = take.gather(1, order)
        slot = torch.where(has, order, order[:, :1])
        new_idx = self.idx.gather(1, slot)
        if self.A_W is not None:
            fresh = ops.atoms.index_select(0, new_idx.reshape(-1)).view(k, p, -1)
            self.A_W.scatter_(1, slot.unsqueeze(2).expand(-1, -1, self.A_W.shape[2]), fresh)
            rows_new = torch.bmm(fresh, self.A_W.transpose(1, 2))
        else:
            rows_new = ops.cross(new_idx, self.idx)
        rows_new = torch.where(self.b.unsqueeze(1) > BLOCKED, rows_new.to(FINE_DTYPE), 0.0)  # padding stays decoupled
        any_new = has[:, :1].unsqueeze(2)  # padding repeats the first new slot; rows without one keep their row
        rows_new = torch.where(any_new, rows_new, self.G.gather(1, slot.unsqueeze(2).expand(-1, -1, w)))
        self.G.scatter_(1, slot.unsqueeze(2).expand(-1, -1, w), rows_new)
        self.G.scatter_(2, slot.unsqueeze(1).expand(-1, w, -1), rows_new.transpose(1, 2))
        return p

    def _grow(self, extra: int) -> None:
        """Append `extra` padding slots (atom 0, b = BLOCKED, decoupled: identity rows in G)."""
        k, w = self.idx.shape
        dev, dt = self.v.device, self.v.dtype
        self.idx = torch.cat([self.idx, self.idx.new_zeros(k, extra)], dim=1)
        self.v = torch.cat([self.v, self.v.new_zeros(k, extra)], dim=1)
        self.b = torch.cat([self.b, self.b.new_full((k, extra), BLOCKED)], dim=1)
        G = torch.zeros(k, w + extra, w + extra, dtype=dt, device=dev)
        G[:, :w, :w] = self.G
        G[:, w:, w:] = torch.eye(extra, dtype=dt, device=dev)
        self.G = G
        if self.A_W is not None:
            self.A_W = torch.cat([self.A_W, self.A_W.new_zeros(k, extra, self.A_W.shape[2])], dim=1)


class _Certificate:
    def __init__(self, F: Tensor, gap: Tensor, g: Tensor) -> None:
        self.F, self.gap, self.g = F, gap, g

    def select(self, keep: Tensor) -> "_Certificate":
        return _Certificate(self.F[keep], self.gap[keep], self.g[keep])


def _certificate(
    x: Tensor, c: Tensor, u: Tensor | None, xx: Tensor, lam: float, ops: _Ops, flops: Flops, rows: Tensor | None = None
) -> _Certificate:
    """F(u), the duality gap on the full dictionary, and the full gradient g = rAᵀ (see the module docstring).
    `u` holds the codes as CSR (CPU) or dense rows; None: all zero. Its products are charged to `rows` of `flops`."""
    if u is None:
        residual, g, l1 = x, c, torch.zeros_like(xx)  # g aliases c: the first round only reads it
    else:
        residual = x - u @ ops.atoms
        flops.product(u, ops.atoms.shape[1], rows)
        g = ops.gradient(c, u, residual)
        flops.product(residual if ops.gram is None else u, c.shape[1], rows)
        l1 = row_sums(u)
    r64 = residual.double()
    rr = r64.square().sum(dim=1)
    xr = (x.double() * r64).sum(dim=1)
    F = 0.5 * rr + lam * l1
    return _Certificate(F, duality_gap(F, xr, rr, g.amax(dim=1).double(), lam), g)


def _rows(t: Tensor, rows: Tensor) -> Tensor:
    return t if rows.numel() == t.shape[0] else t[rows]
