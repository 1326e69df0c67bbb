"""k-sparse inference: per-sample codes under the SAE's own sparsity instead of an L1 penalty (DESIGN §9).

    min_u ½ ‖x' − u A‖²   s.t.  u ≥ 0,  ‖u‖₀ ≤ k_r          (k_r per row; default: the encoder's own L0 on row r)

Modes: `ksparse` (unamortized: from non-negative OMP run to ⌈1.25 k_r⌉ atoms and from OMP at k_r, keeping each row's
better code — never worse than OMP at k_r; or init='zero'), to convergence, and `semi_ksparse`: from the encoder's
code, first polished on its own support (step 2 of `ksparse_solver.py`: the magnitudes refitted, the support kept),
then `steps` iterations (default 5, `catalog.SEMI_KSPARSE_STEPS`: a semi-amortized budget, ≤ 10 encoder-equivalents).
With the default k every row keeps exactly the encoder's per-row L0 (TopK: its k; BatchTopK / JumpReLU: whatever
fired), unless fewer than k_r atoms can take a positive code on that row, or fewer already explain it to rounding
(rows with k_r ≥ d_in: on toy/gated's BOS-like rows OMP explains x' with 116 atoms where the encoder fires 160). `k`
may also be one integer or a per-row tensor. `info["objective"]` says "l2 at fixed per-row L0" (the λ modes solve the
L1 lasso); the reported objective is F at λ when one is given (NaN otherwise), like OMP's.

The solver (`ksparse_solver.py`): projected gradient with a top-k projection, polished on the support, from each
start to a fixed point, to the residual's rounding, or for `steps` iterations (default 100; semi_ksparse 5). Rows are
solved in blocks of similar k_r, each row's starting points side by side in one batched solve (one set of steps for
all of them: toy/standard ksparse, 2 048 rows in batches of 1 024, 9.8 → 7.1 s, codes equal). With `starts` > 1 the
unamortized mode also starts from OMP with its first atom forced to be the 2nd, 3rd, … most correlated one and keeps
each row's best code: on tiny coherent problems (d = 8, m = 16, k = 2) one start finds the best subset on ~75–89 % of
rows (OMP alone: 73–89 %), four starts on ~90–98 %.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from jaxtyping import Float
from torch import Tensor

from saelens_amort.catalog import SEMI_KSPARSE_STEPS
from saelens_amort.errors import SaeAmortError
from saelens_amort.inference.amortized import encoder_flops
from saelens_amort.inference.flops import Flops
from saelens_amort.inference.gram import work_dtype
from saelens_amort.inference.ksparse_solver import DEFAULT_MAX_ITER, KSparseOutput, half_sq, ksparse_pg
from saelens_amort.inference.omp import nn_omp, pursuit_gram
from saelens_amort.inference.refit import size_blocks
from saelens_amort.inference.registry import register_mode
from saelens_amort.inference.result import InferenceResult, ModeOptions, make_result, objective_from_residual
from saelens_amort.saes.dictionary import Dictionary

BLOCK_ELEMENTS = 2**25
"""Rows per block are chosen so one block's working set stays near this many numbers (2**23 saves 50–80 MB on the
toy SAEs at equal speed, but is 5–20 % slower at d_sae 4 096, d_in 768, k = 64: 1 024 rows, one thread, 9.2–11.8 s
against 8.8–9.8 s)."""

OBJECTIVE = "l2 at fixed per-row L0"
"""What `info["objective"]` says these modes solved (the λ modes: "l1 lasso")."""

OMP_WIDTH = 1.25
"""The OMP start runs each row to ⌈OMP_WIDTH · k_r⌉ atoms (the first projection keeps its k_r largest), and the
solver also runs from OMP's codes at k_r on the way, keeping each row's better result. The wider greedy start alone
lands in better optima (toy SAEs, 2 048 rows, ½‖x' − uA‖² / ‖x'‖² at the end: batchtopk 0.0195 /
0.0181 / 0.0179 / 0.0192 for widths 1 / 1.25 / 1.5 / 3, jumprelu 0.0372 / – / 0.0355 / 0.0364, standard 0.0131 /
0.0129 / 0.0127 / 0.0134) for 1.3–1.7× the time of width 1; with both starts (the default) 0.0179, 0.0354 and 0.0128
for 1.2–1.9× the time of the start the solver had before, OMP to its block's widest k_r (0.0183, 0.0360, 0.0128),
which made a row's code depend on what shared its block."""

DEFAULT_STARTS = 1
"""Starting points of the unamortized mode (see `starts`)."""

OPTIONS = ("k_rows", "starts")
"""`k_rows`: per-row k (what `infer(k=<tensor>)` passes on); `starts`: run from this many OMP starts (OMP, then OMP
with its first atom forced to be the 2nd, 3rd, … most correlated one) and keep each row's best code."""

INITS = ("omp", "zero", "encoder")


def check_k_rows(k_rows: Tensor, n: int, d_sae: int, mode: str) -> Tensor:
    """Per-row k as a validated long tensor [n] with values in [1, d_sae]."""
    integer = isinstance(k_rows, Tensor) and not (k_rows.is_floating_point() or k_rows.is_complex())
    if not integer or k_rows.dtype == torch.bool:
        raise SaeAmortError(f"mode {mode!r}: per-row k must be an integer tensor, got {k_rows!r}")
    if tuple(k_rows.shape) != (n,):
        raise SaeAmortError(f"mode {mode!r}: per-row k has shape {tuple(k_rows.shape)}; expected one per row ({n})")
    if n and not (int(k_rows.min()) >= 1 and int(k_rows.max()) <= d_sae):
        raise SaeAmortError(
            f"mode {mode!r}: every k must be in [1, d_sae={d_sae}], got values in "
            f"[{int(k_rows.min())}, {int(k_rows.max())}]"
        )
    return k_rows.long()


def _encoder_codes(x: Tensor, dictionary: Dictionary, mode: str, why: str, flops: Flops) -> Tensor:
    if dictionary.sae is None:
        raise SaeAmortError(f"mode {mode!r} needs the SAE's encoder for {why}; pass the SAE, or k=... and init='zero'")
    z = dictionary.sae.encode(x)
    flops.add(encoder_flops(dictionary.sae, x))
    return dictionary.from_sae_codes(z.to(dictionary.atoms.dtype)).clamp_min(0)


def _run(
    x: Tensor, dictionary: Dictionary, options: ModeOptions, mode: str, default_init: str, default_steps: int
) -> InferenceResult:
    n, m, d = x.shape[0], dictionary.d_sae, dictionary.d_in
    init = default_init if options.init is None else options.init
    if isinstance(init, str) and init not in INITS:
        raise SaeAmortError(f"mode {mode!r}: init must be one of {', '.join(INITS)} or SAE codes, got {init!r}")
    starts = options.option("starts", DEFAULT_STARTS)
    if isinstance(starts, bool) or not isinstance(starts, int) or starts < 1:
        raise SaeAmortError(f"mode {mode!r}: starts must be a positive integer, got {starts!r}")
    if starts > 1 and init != "omp":
        raise SaeAmortError(f"mode {mode!r}: starts > 1 needs the OMP start (init=None), not init={init!r}")
    u_enc = None
    flops = Flops(n, dictionary.atoms.device)
    k_rows = options.option("k_rows")
    if k_rows is not None:
        if options.k is not None:
            raise SaeAmortError(f"mode {mode!r}: give k either as one integer or per row, not both")
        k_rows, source = check_k_rows(k_rows, n, m, mode).to(dictionary.atoms.device), "given per row"
    elif options.k is not None:
        if options.k > m:
            raise SaeAmortError(f"mode {mode!r}: k must be in [1, d_sae={m}], got {options.k}")
        k_rows, source = torch.full((n,), options.k, dtype=torch.long, device=dictionary.atoms.device), "given"
    else:
        u_enc = _encoder_codes(x, dictionary, mode, "its default k (the encoder's per-row L0)", flops)
        k_rows, source = (u_enc > 0).sum(dim=1), "encoder per-row L0"
    if isinstance(init, Tensor):
        u0_all = dictionary.from_sae_codes(init.to(dictionary.atoms.dtype)).clamp_min(0)
    elif init == "encoder":
        u0_all = u_enc if u_enc is not None else _encoder_codes(x, dictionary, mode, "init='encoder'", flops)
    else:
        u0_all = None

    wd = work_dtype(dictionary.atoms.dtype)
    dev = dictionary.atoms.device
    u = torch.zeros(n, m, dtype=wd, device=dev)
    residual = torch.zeros(n, d, dtype=wd, device=dev)
    n_iter = torch.zeros(n, dtype=torch.long, device=dev)
    converged = torch.zeros(n, dtype=torch.bool, device=dev)
    max_iter = default_steps if options.steps is None else options.steps
    rejected = 0
    k_max = int(k_rows.max()) if n else 1
    gram, compiled = pursuit_gram(dictionary, n, k_max) if init == "omp" else (None, False)
    copies = min(starts, m) + 1 if init == "omp" else 1  # starting points solved side by side per row
    for rows, _ in size_blocks(k_rows, copies * (3 * m + 2 * d), copies * (d + 4), BLOCK_ELEMENTS):
        x_t = dictionary.target(x[rows])
        block = Flops(rows.numel(), dev)
        if init == "omp":
            u0 = torch.cat(list(_omp_starts(x_t, dictionary.atoms, k_rows[rows], starts, gram, compiled, block)))
        else:
            u0 = None if u0_all is None else u0_all[rows]
        # every start in one solve: its per-step work is batched over all of them (rows are independent)
        out = ksparse_pg(x_t.repeat(copies, 1), dictionary, k_rows[rows].repeat(copies), u0=u0, max_iter=max_iter,
                         tol=float(options.tol), polish_start=init != "omp" and u0 is not None)
        best = None
        for part in _split(out, copies):
            block.absorb(part.flops)
            best = part if best is None else _better(best, part)
        flops.absorb(block, rows)
        u[rows], residual[rows], n_iter[rows], converged[rows] = best.u, best.residual, best.n_iter, best.converged
        rejected += best.rejected
    info = {
        "objective": OBJECTIVE,
        "k": {"source": source, "mean": float(k_rows.float().mean()) if n else 0.0, "max": k_max},
        "k_rows": k_rows.cpu(),
        "init": init if not isinstance(init, Tensor) else "codes",
        "starts": starts,
        "max_iter": max_iter,
        "tol": float(options.tol),
        "rejected_steps": rejected,
        **flops.info(),
    }
    obj = objective_from_residual(residual, u, options.lam)
    codes = dictionary.to_sae_codes(u).to(dictionary.atoms.dtype)
    return make_result(codes, obj, n_iter=n_iter, converged=converged, lam=options.lam, info=info)


def _omp_starts(
    x_t: Tensor, atoms: Tensor, k_rows: Tensor, starts: int, gram: Tensor | None, compiled: bool, flops: Flops
) -> Iterator[Tensor]:
    """Initial codes: non-negative OMP to ⌈OMP_WIDTH · k_r⌉ atoms on each row and its codes at k_r atoms on the way
    (OMP at k_r: both from one run), then OMP at k_r with its first atom forced to be the 2nd, 3rd, … most
    correlated one (coefficient ⟨x', a⟩), for `starts` > 1; their work is charged to `flops`. A row's starts depend
    on its own k_r only, not on what shares its block."""
    wide = (k_rows.double() * OMP_WIDTH).ceil().long().clamp(max=atoms.shape[0])
    first = nn_omp(x_t, atoms, max(1, int(wide.max())), gram=gram, k_rows=wide, prefix=k_rows, compiled=compiled)
    flops.absorb(first.flops)
    yield first.u
    yield first.u_prefix
    if starts == 1:
        return
    width = max(1, int(k_rows.max()))
    wd = work_dtype(atoms.dtype)
    X, A = x_t.to(wd), atoms.to(wd)
    top = (X @ A.T).topk(min(starts, A.shape[0]), dim=1)
    flops.add(2.0 * A.shape[1] * A.shape[0])
    for s in range(1, top.indices.shape[1]):
        a, coef = top.indices[:, s : s + 1], top.values[:, s : s + 1].clamp_min(0)
        if width > 1:
            out = nn_omp(X - coef * A[a.squeeze(1)], A, width - 1, gram=gram, k_rows=(k_rows - 1).clamp_min(0),
                         compiled=compiled)
            flops.absorb(out.flops)
            u0 = out.u
        else:
            u0 = torch.zeros(X.shape[0], A.shape[0], dtype=wd, device=X.device)
        yield u0.scatter_add_(1, a, coef)


def _split(out: KSparseOutput, copies: int) -> list[KSparseOutput]:
    """The solve of `copies` stacked starts as one output per start (its rejected steps all go to the first)."""
    n = out.u.shape[0] // copies
    parts = []
    for c in range(copies):
        s = slice(c * n, (c + 1) * n)
        flops = Flops(n, out.u.device)
        flops.matmul, flops.other = out.flops.matmul[s], out.flops.other[s]
        parts.append(KSparseOutput(out.u[s], out.residual[s], out.n_iter[s], out.converged[s],
                                   out.rejected if c == 0 else 0, flops))
    return parts


def _better(a: KSparseOutput, b: KSparseOutput) -> KSparseOutput:
    """Per row, the output with the smaller ½‖x' − uA‖² (a on ties); iterations add up (FLOPs are tallied by the
    caller: a's are kept)."""
    pick = half_sq(b.residual) < half_sq(a.residual)
    col = pick.unsqueeze(1)
    return KSparseOutput(
        torch.where(col, b.u, a.u),
        torch.where(col, b.residual, a.residual),
        a.n_iter + b.n_iter,
        torch.where(pick, b.converged, a.converged),
        a.rejected + b.rejected,
        a.flops,
    )


@torch.no_grad()
def ksparse(x: Float[Tensor, "N d_in"], dictionary: Dictionary, options: ModeOptions) -> InferenceResult:
    """Unamortized k-sparse codes: from non-negative OMP to ⌈OMP_WIDTH · k_r⌉ atoms and from OMP at k_r, each row's
    better result (init='zero': from 0), to convergence."""
    return _run(x, dictionary, options, "ksparse", "omp", DEFAULT_MAX_ITER)


@torch.no_grad()
def semi_ksparse(x: Float[Tensor, "N d_in"], dictionary: Dictionary, options: ModeOptions) -> InferenceResult:
    """Semi-amortized k-sparse codes: the encoder's code polished on its support, then `steps` (default 5)
    iterations; never worse than the encoder's code at the same per-row L0."""
    return _run(x, dictionary, options, "semi_ksparse", "encoder", SEMI_KSPARSE_STEPS)


register_mode("ksparse", ksparse, needs_lambda=False, options=OPTIONS)
register_mode("semi_ksparse", semi_ksparse, needs_lambda=False, needs_sae=True, options=OPTIONS)
