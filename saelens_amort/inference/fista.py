"""Unamortized inference: the non-negative lasso per row, to a certified tolerance (DESIGN §2–3).

    min_u  ½ ‖x' − u A‖² + λ ‖u‖₁ ,  u ≥ 0          step 1/L, L = σ_max(A)²,  prox = max(v − λ/L, 0)

`run` (shared with semi) chunks rows, builds the warm start and calls a solver:

- solver='active_set' (unamortized's default, `active_set.py`): on the CPU, with an fp64 Gram of at most
  `active_set.MAX_GRAM_BYTES`, each row's Lawson–Hanson active-set solve in compiled loops, certified as below;
  elsewhere (CUDA, wider dictionaries, return_trace) it runs 'working_set', and `info["solver"]` says which ran.
- solver='working_set' (`working_set.py`): per-row working sets and a duality-gap certificate on the full
  dictionary; `tol` bounds the relative gap, so F(u) ≤ F* (1 + tol) holds per row.
- solver='fista' / 'ista' (`solve`, here): dense FISTA with adaptive restart, or ISTA; `tol` bounds the relative
  objective change (two in a row), a weaker stop (rows stopped by it can sit 0.5–3 % above the optimum on trained
  decoders), so `converged` is not that rule: at exit each row's duality gap is computed as the working-set solver
  does, and `converged` says gap ≤ tol · F(u). Gram-free and batched: per iteration one GEMM for the gradient at
  the momentum point, in place, and the new point's uA (a sparse product while the codes are sparse), which gives
  the exact objective. The objective never increases: a step that would raise it is rejected and the momentum
  restarted, so the next step is a plain proximal-gradient step (O'Donoghue & Candès function restart made
  monotone; the gradient-restart test is available too). Stopped rows leave the working batch in bulk.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from jaxtyping import Float
from torch import Tensor

from saelens_amort.errors import SaeAmortError
from saelens_amort.inference import active_set
from saelens_amort.inference import gram as gram_cache
from saelens_amort.inference.amortized import encoder_flops
from saelens_amort.inference.block_solver import duality_gap
from saelens_amort.inference.flops import Flops, combine
from saelens_amort.inference.registry import register_mode
from saelens_amort.inference.result import (
    InferenceResult,
    ModeOptions,
    SolveOutput,
    make_result,
)
from saelens_amort.inference.solve_trace import cat_traces
from saelens_amort.inference.sparse_codes import row_sums, to_csr
from saelens_amort.inference.working_set import FLOOR, default_ws_size, solve_working_set
from saelens_amort.saes.dictionary import Dictionary
from saelens_amort.saes.dictionary_probe import encode_rows

DEFAULT_MAX_ITER = 200
"""Unamortized iteration cap (the paper's)."""

DEFAULT_BATCH_ROWS = 2048
"""Rows solved together; bounds memory at a few [rows, d_sae] tensors."""

GRAM_PAYBACK_ROUNDS = 4
"""gram='auto' builds the Gram for at least d_sae / GRAM_PAYBACK_ROUNDS rows (or reuses a cached one)."""

COMPACT_FRACTION = 16
"""Finished rows leave the working batch once they are ≥ 1/COMPACT_FRACTION of it."""

SPARSE_DENSITY = 0.1
"""On CPU, uA goes through a sparse product while at most this fraction of the codes is non-zero."""

SOLVERS = ("fista", "ista")
"""Dense solvers (this file); `run` also dispatches to "working_set" (working_set.py)."""

MODE_SOLVERS = ("active_set", "working_set", "fista", "ista")
DEFAULT_SOLVER = "active_set"
RESTARTS = ("function", "gradient")
GRAM_CHOICES = ("auto", True, False)
SOLVER_OPTIONS = ("solver", "restart", "return_trace", "batch_rows", "ws_size", "gram", "max_gram_bytes")


@torch.no_grad()
def solve(
    x_target: Float[Tensor, "N d_in"],
    atoms: Float[Tensor, "d_sae d_in"],
    lam: float,
    lipschitz: float,
    *,
    u0: Float[Tensor, "N d_sae"] | None = None,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = 1e-4,
    solver: str = "fista",
    restart: str = "function",
    return_trace: bool = False,
    patience: int = 2,
) -> SolveOutput:
    """Solve the non-negative lasso for every row of `x_target` against `atoms` (one batch, no chunking).

    A row stops after `patience` consecutive relative objective changes ≤ tol, or at `max_iter` iterations.

    One iteration is one GEMM and three passes over [N, d_sae], with no allocation of that size: the momentum point
    y is overwritten in place by u⁺ = max(y − ((yA − x')Aᵀ + λ)/L, 0) (one `addmm_` on the augmented matrices
    [yA − x', λ] and [A, 1]), clamped in place, u⁺A is a sparse product while the codes are sparse, and the old
    code's buffer becomes the next momentum point u⁺ + β(u⁺ − u) by one `lerp_`.
    """
    if solver not in SOLVERS:
        raise SaeAmortError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if restart not in RESTARTS:
        raise SaeAmortError(f"restart must be one of {', '.join(RESTARTS)}, got {restart!r}")
    n, m = x_target.shape[0], atoms.shape[0]
    dtype, device = atoms.dtype, atoms.device
    acc = torch.promote_types(dtype, torch.float32)
    x_t = x_target.to(dtype)
    step = 1.0 / lipschitz if lipschitz > 0 else 0.0
    flops = Flops(n, device)
    times_atoms = _TimesAtoms(atoms, flops)
    atoms_aug = torch.cat([atoms, torch.ones(m, 1, dtype=dtype, device=device)], dim=1)  # [A, 1]
    r_aug = torch.full((n, atoms.shape[1] + 1), lam, dtype=dtype, device=device)  # [yA − x', λ]

    if u0 is None:
        u = torch.zeros(n, m, dtype=dtype, device=device)
        uA = torch.zeros_like(x_t)
        l1 = torch.zeros(n, dtype=acc, device=device)
    else:
        u = u0.to(dtype).clamp_min(0)
        uA, l1 = times_atoms(u, acc, None)
    F = _objective(x_t, uA, l1, lam, acc)
    y = u.clone()  # the buffer that becomes u⁺ in place
    yA = uA
    t = torch.ones(n, dtype=acc, device=device)
    plain = torch.ones(n, dtype=torch.bool, device=device)  # y == u: the next step has no momentum
    streak = torch.zeros(n, dtype=torch.long, device=device)  # consecutive steps with a small relative change
    n_iter = torch.zeros(n, dtype=torch.long, device=device)
    restarts = torch.zeros(n, dtype=torch.long, device=device)
    # The working batch holds rows still being solved plus a few finished ones (`finished`), dropped in bulk;
    # `rows` maps working rows back to the output.
    rows = torch.arange(n, device=device)
    finished = torch.zeros(n, dtype=torch.bool, device=device)

    out_u = torch.empty_like(u)  # each row is written once: where it stops, or after the loop
    out_F = F.clone()
    out_iter = torch.zeros(n, dtype=torch.long, device=device)
    out_restarts = torch.zeros(n, dtype=torch.long, device=device)
    trace = [F.clone()] if return_trace else None

    for _ in range(max_iter):
        if rows.numel() == 0:
            break
        torch.sub(yA, x_t, out=r_aug[:, :-1])
        y_before = y.clone() if restart == "gradient" and solver == "fista" else None
        u_new = y.addmm_(r_aug, atoms_aug.T, alpha=-step).clamp_(min=0)  # y's buffer now holds u⁺
        flops.add(2.0 * r_aug.shape[1] * m, rows)
        uA_new, l1_new = times_atoms(u_new, acc, rows)
        F_new = _objective(x_t, uA_new, l1_new, lam, acc)
        n_iter += 1

        accept = F_new <= F
        # Stop on `patience` small relative changes in a row (a momentum step can overshoot to an equal F by chance),
        # or when a step without momentum fails to descend strictly: a proximal-gradient step from u lowers F by at
        # least L/2‖u⁺ − u‖², so that is a fixed point (the optimum) or the rounding floor.
        small = (F - F_new).abs() <= tol * F_new.abs()
        streak = torch.where(small, streak + 1, 0)
        done = ((streak >= patience) | (plain & (F_new >= F))) & ~finished
        if solver == "fista":
            t_new = 0.5 * (1.0 + torch.sqrt(1.0 + 4.0 * t * t))
            keep_momentum = accept
            if restart == "gradient":
                # O'Donoghue–Candès: restart when the step and the momentum direction disagree.
                keep_momentum = accept & (((y_before - u_new) * (u_new - u)).sum(dim=-1) <= 0)
            beta = torch.where(keep_momentum, (t - 1.0) / t_new, 0.0)
            t = torch.where(keep_momentum, t_new, 1.0)
            restarts += (~keep_momentum).long()
            plain = beta == 0
        else:
            beta = torch.zeros_like(t)
            restarts += (~accept).long()

        if not bool(accept.all()):  # rejected rows keep u (and restart from it)
            rej = (~accept).nonzero().squeeze(1)
            u_new[rej] = u[rej]
            uA_new = torch.where(accept[:, None], uA_new, uA)
            F_new = torch.where(accept, F_new, F)
        # Momentum point into the old code's buffer: y = u⁺ + β(u⁺ − u) = lerp(u, u⁺, 1 + β).
        weight = (1.0 + beta).to(dtype)[:, None]
        y_next = u.lerp_(u_new, weight)
        yA = torch.lerp(uA, uA_new, weight)
        u, uA, F, y = u_new, uA_new, F_new, y_next

        if trace is not None:
            full = out_F.clone()
            full[rows[~finished]] = F[~finished]
            trace.append(full)
        if bool(done.any()):
            stop = done.nonzero().squeeze(1)
            out_u[rows[stop]] = u[stop]
            out_F[rows[stop]] = F[stop]
            out_iter[rows[stop]] = n_iter[stop]
            out_restarts[rows[stop]] = restarts[stop]
            finished |= done
            n_finished = int(finished.sum())
            if n_finished * COMPACT_FRACTION >= rows.numel():
                live = (~finished).nonzero().squeeze(1)
                rows, x_t, u, uA, y, yA, F, t, plain, streak, n_iter, restarts, finished, r_aug = (
                    v[live] for v in (rows, x_t, u, uA, y, yA, F, t, plain, streak, n_iter, restarts, finished, r_aug)
                )

    if rows.numel() == n and not bool(finished.any()):  # no row stopped early (semi's K steps): u is the output
        out_u, out_F, out_iter, out_restarts = u, F, n_iter, restarts
    elif rows.numel():
        live = (~finished).nonzero().squeeze(1)
        out_u[rows[live]] = u[live]
        out_F[rows[live]] = F[live]
        out_iter[rows[live]] = n_iter[live]
        out_restarts[rows[live]] = restarts[live]
    return SolveOutput(
        u=out_u,
        n_iter=out_iter,
        objective=out_F,
        converged=_certified(x_target.to(dtype), out_u, atoms, lam, tol, flops),
        restarts=out_restarts,
        trace=torch.stack(trace) if trace is not None else None,
        flops=flops,
    )


class _TimesAtoms:
    """u ↦ (uA, Σ_j u_j): through a sparse (CSR) product on CPU while the codes are sparse, else a dense matmul.
    Density is re-checked (one count) after dense products, so codes that sparsify later go back to CSR. Each
    product is charged to `flops` (the rows of u are output rows `rows`; None: all, in order)."""

    def __init__(self, atoms: Tensor, flops: Flops) -> None:
        self.atoms, self.flops = atoms, flops
        self.sparse = atoms.device.type == "cpu"
        self.cpu = self.sparse

    def __call__(self, u: Tensor, acc: torch.dtype, rows: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.sparse and u.numel():
            csr = to_csr(u)
            if csr.values().numel() <= SPARSE_DENSITY * u.numel():
                self.flops.product(csr, self.atoms.shape[1], rows)
                return csr @ self.atoms, row_sums(csr).to(acc)
            self.sparse = False
        elif self.cpu and u.numel():
            self.sparse = int(torch.count_nonzero(u)) <= SPARSE_DENSITY * u.numel()
        self.flops.product(u, self.atoms.shape[1], rows)
        return u @ self.atoms, u.to(acc).sum(dim=-1)


def _certified(x_t: Tensor, u: Tensor, atoms: Tensor, lam: float, tol: float, flops: Flops) -> Tensor:
    """Per row: the duality gap at u is ≤ tol · F(u) (or rounding), the working-set solver's certificate: one more
    encoder-sized product, r = x' − uA (sparse u) and g = rAᵀ, at exit."""
    codes = to_csr(u)
    residual = x_t - codes @ atoms
    flops.product(codes, atoms.shape[1])
    g_max = (residual @ atoms.T).amax(dim=1).double()
    flops.product(residual, atoms.shape[0])
    r64 = residual.double()
    rr = r64.square().sum(dim=1)
    xx = x_t.double().square().sum(dim=1)
    F = 0.5 * rr + lam * row_sums(codes)  # from the CSR: u.double() copied [n, d_sae] (0.23 s at 1 024 × 16 384)
    gap = duality_gap(F, (x_t.double() * r64).sum(dim=1), rr, g_max, lam)
    return gap <= torch.maximum(tol * F, FLOOR * torch.finfo(x_t.dtype).eps * xx)


def _objective(x_t: Tensor, uA: Tensor, l1: Tensor, lam: float, acc: torch.dtype) -> Tensor:
    residual = (x_t - uA).to(acc)
    return 0.5 * residual.square().sum(dim=-1) + lam * l1


def initial_codes(
    x: Float[Tensor, "N d_in"], dictionary: Dictionary, init: str | Tensor | None, lam: float, flops: Flops
) -> Float[Tensor, "N d_sae"] | None:
    """The warm start u0 in unit-atom space (None = zeros): 'encoder' (sae.encode), 'alista', 'zero', or SAE codes;
    its products are charged to `flops`."""
    if init is None or (isinstance(init, str) and init == "zero"):
        return None
    if isinstance(init, Tensor):
        return dictionary.from_sae_codes(init.to(dictionary.atoms.dtype)).clamp_min(0)
    if init == "encoder":
        if dictionary.sae is None:
            raise SaeAmortError("init='encoder' needs the SAE's encoder; pass the SAE or use init='alista'")
        z = encode_rows(dictionary.sae, x)
        flops.add(encoder_flops(dictionary.sae, x))
        return dictionary.from_sae_codes(z.to(dictionary.atoms.dtype)).clamp_min(0)
    if init == "alista":
        L = dictionary.lipschitz
        c = dictionary.target(x) @ dictionary.atoms.T
        flops.add(2.0 * dictionary.d_in * dictionary.d_sae)
        return ((c - lam) / L).clamp_min(0) if L > 0 else torch.zeros_like(c)
    raise SaeAmortError(f"unknown init {init!r}")


def run(
    x: Float[Tensor, "N d_in"],
    dictionary: Dictionary,
    options: ModeOptions,
    *,
    default_init: str | None,
    default_steps: int,
    default_solver: str = DEFAULT_SOLVER,
) -> InferenceResult:
    """Shared body of the unamortized and semi modes: chunk rows, warm start, solve, map codes to SAE space.

    Options: solver (`default_solver`: 'active_set' for unamortized, 'fista' for semi; or 'ista'), restart (dense FISTA), return_trace, batch_rows;
    for the working-set solver also ws_size (smallest working set), gram ('auto': use the cached d_sae² Gram when
    it fits max_gram_bytes and the rows pay for building it; True; False) and max_gram_bytes.
    """
    lam = options.lam
    if lam is None:
        raise SaeAmortError("this mode needs lam (or lam=None through infer, which calibrates it)")
    max_iter = default_steps if options.steps is None else options.steps
    batch_rows = options.option("batch_rows", DEFAULT_BATCH_ROWS)
    if not isinstance(batch_rows, int) or isinstance(batch_rows, bool) or batch_rows < 1:
        raise SaeAmortError(f"batch_rows must be a positive integer, got {batch_rows!r}")
    solver = options.option("solver", default_solver)
    if solver not in MODE_SOLVERS:
        raise SaeAmortError(f"solver must be one of {', '.join(MODE_SOLVERS)}, got {solver!r}")
    init = default_init if options.init is None else options.init
    return_trace = bool(options.option("return_trace", False))
    info: dict = {
        "solver": solver,
        "max_iter": max_iter,
        "tol": float(options.tol),
        "init": init if not isinstance(init, Tensor) else "codes",
        "lipschitz": None,
    }
    gram64 = active_set.compiled_gram(dictionary, x.device) if solver == "active_set" and not return_trace else None
    if gram64 is not None:
        ws_size = _working_set_options(options, dictionary, 0)[0]  # validated; for rows it hands on
        info.update(ws_size=ws_size, gram=True)
        del info["lipschitz"]

        def solve_chunk(x_t: Tensor, u0: Tensor | None) -> SolveOutput:
            return active_set.solve_active_set(x_t, dictionary.atoms, lam, gram64, u0=u0, max_iter=max_iter,
                                               tol=float(options.tol), ws_size=ws_size)
    elif solver in ("active_set", "working_set"):
        ws_size, gram = _working_set_options(options, dictionary, x.shape[0])
        info.update(solver="working_set", ws_size=ws_size, gram=gram is not None)
        del info["lipschitz"]

        def solve_chunk(x_t: Tensor, u0: Tensor | None) -> SolveOutput:
            return solve_working_set(
                x_t, dictionary.atoms, lam, gram=gram, u0=u0, max_iter=max_iter, tol=float(options.tol),
                ws_size=ws_size, return_trace=return_trace,
            )
    else:
        restart = options.option("restart", "function")
        L = dictionary.lipschitz
        info.update(restart=restart, lipschitz=L)

        wd = gram_cache.work_dtype(dictionary.atoms.dtype)  # bf16/fp16 dictionaries are solved in fp32
        atoms = dictionary.atoms.to(wd)

        def solve_chunk(x_t: Tensor, u0: Tensor | None) -> SolveOutput:
            out = solve(
                x_t.to(wd), atoms, lam, L, u0=None if u0 is None else u0.to(wd), max_iter=max_iter,
                tol=float(options.tol), solver=solver, restart=restart, return_trace=return_trace,
            )
            return replace(out, u=out.u.to(dictionary.atoms.dtype))

    parts: list[SolveOutput] = []
    start_flops: list[dict] = []
    for start in range(0, x.shape[0], batch_rows):
        xb = x[start : start + batch_rows]
        init_b = init[start : start + batch_rows] if isinstance(init, Tensor) else init
        flops_b = Flops(xb.shape[0], xb.device)
        parts.append(solve_chunk(dictionary.target(xb), initial_codes(xb, dictionary, init_b, lam, flops_b)))
        flops_b.absorb(parts[-1].flops)
        start_flops.append(flops_b.info())
    if not parts:
        parts.append(solve_chunk(dictionary.target(x), None))
    info.update(combine(start_flops, x.shape[0], x.device))
    u = torch.cat([p.u for p in parts])
    info["restarts"] = torch.cat([p.restarts for p in parts])
    if return_trace:
        info["trace"] = cat_traces([p.trace for p in parts])
    return make_result(
        dictionary.to_sae_codes(u),
        torch.cat([p.objective for p in parts]),
        n_iter=torch.cat([p.n_iter for p in parts]),
        converged=torch.cat([p.converged for p in parts]),
        lam=lam,
        info=info,
    )


def _working_set_options(options: ModeOptions, dictionary: Dictionary, n_rows: int) -> tuple[int, Tensor | None]:
    """ws_size and the Gram to use (None: blocks and gradients from the atoms) for the working-set solver."""
    ws_size = options.option("ws_size", default_ws_size(dictionary.d_in))
    if isinstance(ws_size, bool) or not isinstance(ws_size, int) or ws_size < 1:
        raise SaeAmortError(f"ws_size must be a positive integer, got {ws_size!r}")
    choice = options.option("gram", "auto")
    if not any(choice is c or (isinstance(c, str) and choice == c) for c in GRAM_CHOICES):
        raise SaeAmortError(f"gram must be 'auto', True or False, got {choice!r}")
    max_bytes = options.option("max_gram_bytes", gram_cache.DEFAULT_MAX_BYTES)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise SaeAmortError(f"max_gram_bytes must be a non-negative integer, got {max_bytes!r}")
    wd = gram_cache.work_dtype(dictionary.atoms.dtype)
    m = dictionary.d_sae
    if choice is False:
        return ws_size, None
    if choice == "auto":
        fits = gram_cache.gram_bytes(m, wd) <= max_bytes
        # Building G costs d_sae / n_rows encoder passes; each outer round without it costs about one.
        pays = gram_cache.has_gram(dictionary, wd) or n_rows * GRAM_PAYBACK_ROUNDS >= m
        if not (fits and pays):
            return ws_size, None
    return ws_size, gram_cache.atom_gram(dictionary, wd)


@torch.no_grad()
def unamortized(x: Float[Tensor, "N d_in"], dictionary: Dictionary, options: ModeOptions) -> InferenceResult:
    """From zero to convergence (relative objective change ≤ tol) or `steps` (default 200) iterations."""
    return run(x, dictionary, options, default_init=None, default_steps=DEFAULT_MAX_ITER)


register_mode("unamortized", unamortized, needs_lambda=True, options=SOLVER_OPTIONS)
