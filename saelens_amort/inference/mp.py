"""MP: non-negative matching pursuit, k steps per row, batched (DESIGN §3).

Per row, starting from u = 0, k times: pick the atom with the largest positive correlation c_j = ⟨r, a_j⟩, add c_j
to its coefficient, and subtract c_j a_j from the residual (an atom may be picked again). With unit atoms each step
lowers ‖r‖² by exactly c_j², and coefficients only grow, so codes stay ≥ 0. A row stops early when no correlation
exceeds 1000·eps·‖x'‖ (the residual is numerically explained); `n_iter` counts the steps taken.

Correlations are updated through the Gram, c ← c − c_j G_j (one gathered row per step), when the Gram is small
and the batch is large enough to pay for it (it is cached per dictionary, shared with OMP); otherwise recomputed
as r Aᵀ each step.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from saelens_amort.errors import SaeAmortError
from saelens_amort.inference.flops import Flops
from saelens_amort.inference.omp import (
    STOP_CORRELATION,
    PursuitOutput,
    atom_gram,
    batch_rows,
    check_k,
    pursuit_result,
    use_gram,
    work_dtype,
)
from saelens_amort.inference.registry import register_mode
from saelens_amort.inference.result import InferenceResult, ModeOptions
from saelens_amort.saes.dictionary import Dictionary

MP_OBJECTIVE = "l2 by greedy steps (non-negative matching pursuit, k steps)"
"""What `info["objective"]` says MP solved (greedily, not to an optimum)."""


@torch.no_grad()
def nn_mp(
    x_target: Float[Tensor, "N d_in"],
    atoms: Float[Tensor, "d_sae d_in"],
    k: int,
    *,
    gram: Float[Tensor, "d_sae d_sae"] | None = None,
) -> PursuitOutput:
    """Non-negative matching pursuit of every row of `x_target` on unit-norm `atoms`, k steps (module docstring).

    With `gram` (AAᵀ in the work dtype) correlations are updated as c ← c − c_j G_j; without, recomputed as rAᵀ.
    """
    wd = work_dtype(atoms.dtype)
    A, X = atoms.to(wd), x_target.to(wd)
    n, m = X.shape[0], A.shape[0]
    c_floor = STOP_CORRELATION * torch.finfo(wd).eps * X.norm(dim=1)

    u = torch.zeros(n, m, dtype=wd, device=X.device)
    R = X.clone()
    c = X @ A.T
    flops = Flops(n, X.device)
    flops.add(2.0 * A.shape[1] * m)
    n_iter = torch.zeros(n, dtype=torch.long, device=X.device)
    live = c_floor > 0
    for _ in range(k):
        if not bool(live.any()):
            break
        c_max, j = c.max(dim=1)
        take = live & (c_max > c_floor)
        coef = torch.where(take, c_max, 0.0)
        u.scatter_add_(1, j.unsqueeze(1), coef.unsqueeze(1))
        R -= coef.unsqueeze(1) * A[j]
        flops.add(2.0 * A.shape[1], matmul=False)
        if gram is not None:
            c -= coef.unsqueeze(1) * gram[j]
            flops.add(2.0 * m, matmul=False)
        else:
            c = R @ A.T
            flops.add(2.0 * A.shape[1] * m)
        n_iter += take
        live = take
    return PursuitOutput(u, R, n_iter, 0, flops)


@torch.no_grad()
def mp_mode(x: Float[Tensor, "N d_in"], dictionary: Dictionary, options: ModeOptions) -> InferenceResult:
    """The "mp" mode: `options.k` pursuit steps per row (fewer on early stop); `steps`/`tol` do not apply."""
    k = check_k(options.k, dictionary.d_sae, "mp")
    if options.init is not None and not (isinstance(options.init, str) and options.init == "zero"):
        raise SaeAmortError("mode 'mp' always starts from u = 0; drop init=")
    rows = batch_rows(options, 2 * dictionary.d_sae + dictionary.d_in)
    gram = atom_gram(dictionary, work_dtype(dictionary.atoms.dtype)) if use_gram(dictionary, x.shape[0], k) else None
    outs = [nn_mp(dictionary.target(xb), dictionary.atoms, k, gram=gram) for xb in x.split(rows)]
    return pursuit_result(outs, dictionary, options, k, MP_OBJECTIVE)


register_mode("mp", mp_mode, needs_lambda=False, needs_k=True, options=("batch_rows",))
