"""Unamortized inference: non-negative lasso per row by FISTA with adaptive restart, or ISTA (DESIGN §2–3).

    min_u  ½ ‖x' − u A‖² + λ ‖u‖₁ ,  u ≥ 0          step 1/L, L = σ_max(A)²,  prox = max(v − λ/L, 0)

The solver is Gram-free and batched: c = x'Aᵀ once, then per iteration one matmul for the gradient at the momentum
point, g = (yA)Aᵀ − c, and one for the new point's uA (which gives the exact objective, and yA by linear combination;
on CPU it is a sparse product while the codes are sparse). Each row stops on its own (two consecutive relative
objective changes ≤ tol); stopped rows leave the working batch in bulk, so they cost (almost) nothing. The objective never increases: a step that would raise it is rejected and the momentum restarted, so the
next step is a plain proximal-gradient (ISTA) step, which cannot raise it (O'Donoghue & Candès function restart made
monotone; the gradient-restart test is available too).

`solve` is the seam for faster schemes (working sets, screening): it only needs c, x', A and a warm start.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from saelens_amort.errors import SaeAmortError
from saelens_amort.inference.registry import register_mode
from saelens_amort.inference.result import InferenceResult, ModeOptions, make_result
from saelens_amort.saes.dictionary import Dictionary

DEFAULT_MAX_ITER = 200
"""Unamortized iteration cap (the paper's)."""

DEFAULT_BATCH_ROWS = 2048
"""Rows solved together; bounds memory at a few [rows, d_sae] tensors."""

COMPACT_FRACTION = 16
"""Finished rows leave the working batch once they are ≥ 1/COMPACT_FRACTION of it."""

SPARSE_DENSITY = 0.1
"""On CPU, uA goes through a sparse product while at most this fraction of the codes is non-zero."""

SOLVERS = ("fista", "ista")
RESTARTS = ("function", "gradient")
SOLVER_OPTIONS = ("solver", "restart", "return_trace", "batch_rows")


@dataclass(frozen=True)
class SolveOutput:
    u: Float[Tensor, "N d_sae"]
    """Unit-atom codes."""
    n_iter: Int[Tensor, " N"]
    objective: Float[Tensor, " N"]
    """F at u, in the accumulation dtype (≥ fp32)."""
    converged: Bool[Tensor, " N"]
    restarts: Int[Tensor, " N"]
    """Momentum restarts per row (rejected steps and gradient restarts)."""
    trace: Float[Tensor, "T N"] | None = None
    """F per row after each iteration (row 0 = the start), when asked for."""


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
    times_atoms = _TimesAtoms(atoms)

    # u⁺ = max(y − ((yA)Aᵀ − c)/L − λ/L, 0) = max(y + c_shift − (yA)Aᵀ/L, 0) with c_shift = (x'Aᵀ − λ)/L.
    c_shift = torch.addmm(torch.full((1, m), -lam * step, dtype=dtype, device=device), x_t, atoms.T, alpha=step)
    if u0 is None:
        u = torch.zeros(n, m, dtype=dtype, device=device)
        uA = torch.zeros_like(x_t)
    else:
        u = u0.to(dtype).clamp_min(0)
        uA = times_atoms(u)
    F = _objective(x_t, uA, u, lam, acc)
    y, yA = u, uA
    t = torch.ones(n, dtype=acc, device=device)
    plain = torch.ones(n, dtype=torch.bool, device=device)  # y == u: the next step has no momentum
    streak = torch.zeros(n, dtype=torch.long, device=device)  # consecutive steps with a small relative change
    n_iter = torch.zeros(n, dtype=torch.long, device=device)
    restarts = torch.zeros(n, dtype=torch.long, device=device)
    # The working batch holds rows still being solved plus a few finished ones (`finished`), dropped in bulk;
    # `rows` maps working rows back to the output.
    rows = torch.arange(n, device=device)
    finished = torch.zeros(n, dtype=torch.bool, device=device)

    out_u = u.clone()
    out_F = F.clone()
    out_iter = torch.zeros(n, dtype=torch.long, device=device)
    out_conv = torch.zeros(n, dtype=torch.bool, device=device)
    out_restarts = torch.zeros(n, dtype=torch.long, device=device)
    trace = [F.clone()] if return_trace else None

    for _ in range(max_iter):
        if rows.numel() == 0:
            break
        u_new = torch.addmm(y + c_shift, yA, atoms.T, alpha=-step).clamp_(min=0)
        uA_new = times_atoms(u_new)
        F_new = _objective(x_t, uA_new, u_new, lam, acc)
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
                keep_momentum = accept & (((y - u_new) * (u_new - u)).sum(dim=-1) <= 0)
            beta = torch.where(keep_momentum, (t - 1.0) / t_new, 0.0)
            t = torch.where(keep_momentum, t_new, 1.0)
            restarts += (~keep_momentum).long()
            plain = beta == 0
        else:
            beta = None
            restarts += (~accept).long()

        all_accept = bool(accept.all())
        if all_accept:
            diff, diffA = u_new.sub(u), uA_new - uA
            u, uA, F = u_new, uA_new, F_new
        else:
            a = accept[:, None]
            diff = torch.where(a, u_new - u, 0.0)
            diffA = torch.where(a, uA_new - uA, 0.0)
            u = torch.where(a, u_new, u)
            uA = torch.where(a, uA_new, uA)
            F = torch.where(accept, F_new, F)
        if beta is None:
            y, yA = u, uA
        else:
            b = beta.to(dtype)[:, None]
            y = torch.addcmul(u, b, diff)
            yA = torch.addcmul(uA, b, diffA)

        if trace is not None:
            full = out_F.clone()
            full[rows[~finished]] = F[~finished]
            trace.append(full)
        if bool(done.any()):
            stop = done.nonzero().squeeze(1)
            out_u[rows[stop]] = u[stop]
            out_F[rows[stop]] = F[stop]
            out_iter[rows[stop]] = n_iter[stop]
            out_conv[rows[stop]] = True
            out_restarts[rows[stop]] = restarts[stop]
            finished |= done
            n_finished = int(finished.sum())
            if n_finished * COMPACT_FRACTION >= rows.numel():
                live = (~finished).nonzero().squeeze(1)
                rows, c_shift, x_t, u, uA, y, yA, F, t, plain, streak, n_iter, restarts, finished = (
                    v[live] for v in (rows, c_shift, x_t, u, uA, y, yA, F, t, plain, streak, n_iter, restarts, finished)
                )

    if rows.numel():
        live = (~finished).nonzero().squeeze(1)
        out_u[rows[live]] = u[live]
        out_F[rows[live]] = F[live]
        out_iter[rows[live]] = n_iter[live]
        out_restarts[rows[live]] = restarts[live]
    return SolveOutput(
        u=out_u,
        n_iter=out_iter,
        objective=out_F,
        converged=out_conv,
        restarts=out_restarts,
        trace=torch.stack(trace) if trace is not None else None,
    )


class _TimesAtoms:
    """u ↦ uA, through a sparse (CSR) product on CPU while the codes stay sparse (dense matmul otherwise)."""

    def __init__(self, atoms: Tensor) -> None:
        self.atoms = atoms
        self.sparse = atoms.device.type == "cpu"

    def __call__(self, u: Tensor) -> Tensor:
        if self.sparse and u.numel():
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                csr = u.to_sparse_csr()
            if csr.values().numel() <= SPARSE_DENSITY * u.numel():
                return csr @ self.atoms
            self.sparse = False  # dense codes: stop trying
        return u @ self.atoms


def _objective(x_t: Tensor, uA: Tensor, u: Tensor, lam: float, acc: torch.dtype) -> Tensor:
    residual = (x_t - uA).to(acc)
    return 0.5 * residual.square().sum(dim=-1) + lam * u.to(acc).sum(dim=-1)


def initial_codes(
    x: Float[Tensor, "N d_in"], dictionary: Dictionary, init: str | Tensor | None, lam: float
) -> Float[Tensor, "N d_sae"] | None:
    """The warm start u0 in unit-atom space (None = zeros): 'encoder' (sae.encode), 'alista', 'zero', or SAE codes."""
    if init is None or (isinstance(init, str) and init == "zero"):
        return None
    if isinstance(init, Tensor):
        return dictionary.from_sae_codes(init.to(dictionary.atoms.dtype)).clamp_min(0)
    if init == "encoder":
        if dictionary.sae is None:
            raise SaeAmortError("init='encoder' needs the SAE's encoder; pass the SAE or use init='alista'")
        z = dictionary.sae.encode(x)
        return dictionary.from_sae_codes(z.to(dictionary.atoms.dtype)).clamp_min(0)
    if init == "alista":
        L = dictionary.lipschitz
        c = dictionary.target(x) @ dictionary.atoms.T
        return ((c - lam) / L).clamp_min(0) if L > 0 else torch.zeros_like(c)
    raise SaeAmortError(f"unknown init {init!r}")


def run(
    x: Float[Tensor, "N d_in"],
    dictionary: Dictionary,
    options: ModeOptions,
    *,
    default_init: str | None,
    default_steps: int,
) -> InferenceResult:
    """Shared body of the unamortized and semi modes: chunk rows, warm start, solve, map codes to SAE space."""
    lam = options.lam
    if lam is None:
        raise SaeAmortError("this mode needs lam (or lam=None through infer, which calibrates it)")
    max_iter = default_steps if options.steps is None else options.steps
    batch_rows = options.option("batch_rows", DEFAULT_BATCH_ROWS)
    if not isinstance(batch_rows, int) or batch_rows < 1:
        raise SaeAmortError(f"batch_rows must be a positive integer, got {batch_rows!r}")
    init = default_init if options.init is None else options.init
    kwargs = dict(
        max_iter=max_iter,
        tol=float(options.tol),
        solver=options.option("solver", "fista"),
        restart=options.option("restart", "function"),
        return_trace=bool(options.option("return_trace", False)),
    )
    L = dictionary.lipschitz
    parts: list[SolveOutput] = []
    for start in range(0, x.shape[0], batch_rows):
        xb = x[start : start + batch_rows]
        init_b = init[start : start + batch_rows] if isinstance(init, Tensor) else init
        u0 = initial_codes(xb, dictionary, init_b, lam)
        parts.append(solve(dictionary.target(xb), dictionary.atoms, lam, L, u0=u0, **kwargs))
    if not parts:
        parts.append(solve(dictionary.target(x), dictionary.atoms, lam, L, **kwargs))
    u = torch.cat([p.u for p in parts])
    info: dict = {
        "solver": kwargs["solver"],
        "restart": kwargs["restart"],
        "max_iter": max_iter,
        "tol": kwargs["tol"],
        "init": init if not isinstance(init, Tensor) else "codes",
        "lipschitz": L,
        "restarts": torch.cat([p.restarts for p in parts]),
    }
    if kwargs["return_trace"]:
        info["trace"] = _cat_traces([p.trace for p in parts])
    return make_result(
        dictionary.to_sae_codes(u),
        torch.cat([p.objective for p in parts]),
        n_iter=torch.cat([p.n_iter for p in parts]),
        converged=torch.cat([p.converged for p in parts]),
        lam=lam,
        info=info,
    )


def _cat_traces(traces: list[Tensor | None]) -> Tensor:
    """Concatenate per-chunk traces [T_i, n_i] along rows, padding shorter ones with their last value."""
    ts = [t for t in traces if t is not None]
    T = max(t.shape[0] for t in ts)
    padded = [torch.cat([t, t[-1:].expand(T - t.shape[0], -1)]) if t.shape[0] < T else t for t in ts]
    return torch.cat(padded, dim=1)


@torch.no_grad()
def unamortized(x: Float[Tensor, "N d_in"], dictionary: Dictionary, options: ModeOptions) -> InferenceResult:
    """From zero to convergence (relative objective change ≤ tol) or `steps` (default 200) iterations."""
    return run(x, dictionary, options, default_init=None, default_steps=DEFAULT_MAX_ITER)


register_mode("unamortized", unamortized, needs_lambda=True, options=SOLVER_OPTIONS)
