"""A ground-truth sparse-coding benchmark: known unit-norm atoms, known non-negative k-sparse codes.

`make_problem` draws `x = codes @ atoms (+ σ·noise)`; `mcc` scores inferred codes against the true ones (mean
correlation coefficient after Hungarian matching of latents); `sae_for_problem` wraps the true dictionary in a real
SAE-Lens SAE whose encoder is the matched linear(-ReLU/TopK) encoder `W_enc = atomsᵀ` — the best-case amortized
encoder a perfectly trained SAE could tie to the true dictionary — so that every inference mode can be compared on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
from jaxtyping import Float
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from saelens_amort.errors import SaeAmortError
from saelens_amort.saes.dictionary import Dictionary

if TYPE_CHECKING:
    from sae_lens import SAE

Magnitude = (
    tuple[float, float] | Callable[[tuple[int, ...], torch.Generator], Tensor] | torch.distributions.Distribution
)
"""Non-zero code values: `(lo, hi)` uniform, `fn(shape, generator) -> Tensor`, or a torch Distribution."""


class SyntheticProblem(NamedTuple):
    dictionary: Dictionary
    """The true dictionary: unit-norm atoms [d_sae, d_in], zero bias."""
    codes: Float[Tensor, "n d_sae"]
    """True codes: non-negative, exactly k non-zeros per row."""
    x: Float[Tensor, "n d_in"]
    """Activations `codes @ atoms + noise · ε`, ε ~ N(0, I)."""
    k: int
    """Non-zeros per row."""
    noise: float
    """Standard deviation σ of the Gaussian noise per coordinate."""
    seed: int
    """The seed everything was drawn from."""


def make_problem(
    n: int,
    d_in: int,
    d_sae: int,
    k: int,
    *,
    seed: int = 0,
    noise: float = 0.0,
    magnitude: Magnitude = (0.5, 1.5),
    coherence: float = 0.0,
    frequency_decay: float = 0.0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SyntheticProblem:
    """Draw a k-sparse non-negative coding problem with a known dictionary.

    Atoms are `normalise(√(1−ρ)·g_j + √ρ·s)` with g_j ~ N(0, I/d_in) and one shared unit direction s, so the mean
    pairwise cosine is ≈ ρ = `coherence` (0: random Gaussian atoms, mutual coherence ≈ √(2 log d_sae / d_in)).
    Each row fires k distinct latents drawn without replacement with weights (j+1)^−`frequency_decay` (0: uniform;
    > 0: Zipf-like firing frequencies) and values from `magnitude`. Everything is drawn and multiplied in fp64 on
    the CPU from `seed`, then moved to `device`/`dtype`, so a seed gives the same problem everywhere and `x` is
    exact to the last bit of `dtype`.
    """
    for name, value in (("n", n), ("d_in", d_in), ("d_sae", d_sae), ("k", k)):
        if not isinstance(value, int) or value <= 0:
            raise SaeAmortError(f"make_problem: {name} must be a positive integer, got {value!r}")
    if k > d_sae:
        raise SaeAmortError(f"make_problem: k={k} exceeds d_sae={d_sae}; choose k <= d_sae")
    if noise < 0:
        raise SaeAmortError(f"make_problem: noise is a standard deviation and must be >= 0, got {noise}")
    if not 0.0 <= coherence < 1.0:
        raise SaeAmortError(f"make_problem: coherence must lie in [0, 1), got {coherence}")
    if frequency_decay < 0:
        raise SaeAmortError(f"make_problem: frequency_decay must be >= 0, got {frequency_decay}")

    gen = torch.Generator(device="cpu").manual_seed(seed)
    f64 = torch.float64
    g = torch.randn(d_sae, d_in, generator=gen, dtype=f64) / d_in**0.5
    shared = torch.randn(d_in, generator=gen, dtype=f64)
    atoms = (1 - coherence) ** 0.5 * g + coherence**0.5 * shared / shared.norm()
    atoms = atoms / atoms.norm(dim=1, keepdim=True)

    weights = torch.arange(1, d_sae + 1, dtype=f64) ** -frequency_decay
    support = torch.multinomial(weights.expand(n, d_sae), k, replacement=False, generator=gen)
    values = _draw_magnitudes(magnitude, (n, k), gen, seed)
    codes = torch.zeros(n, d_sae, dtype=f64).scatter_(1, support, values)
    x = codes @ atoms
    if noise > 0:
        x = x + noise * torch.randn(n, d_in, generator=gen, dtype=f64)

    def put(t: Tensor) -> Tensor:
        return t.to(device=device, dtype=dtype)

    dictionary = Dictionary.from_matrix(put(atoms))
    return SyntheticProblem(dictionary, put(codes), put(x), k, float(noise), seed)


def _draw_magnitudes(magnitude: Magnitude, shape: tuple[int, int], gen: torch.Generator, seed: int) -> Tensor:
    if isinstance(magnitude, torch.distributions.Distribution):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            values = magnitude.sample(shape)
    elif callable(magnitude):
        values = torch.as_tensor(magnitude(shape, gen))
    else:
        try:
            lo, hi = (float(v) for v in magnitude)
        except (TypeError, ValueError):
            raise SaeAmortError(
                "make_problem: magnitude must be (lo, hi), fn(shape, generator) or a torch Distribution, "
                f"got {magnitude!r}"
            ) from None
        if not 0 < lo <= hi:
            raise SaeAmortError(f"make_problem: magnitude range needs 0 < lo <= hi, got ({lo}, {hi})")
        values = lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)
    values = values.to(torch.float64)
    if values.shape != shape:
        raise SaeAmortError(f"make_problem: magnitude gave shape {tuple(values.shape)}, expected {shape}")
    if not bool((values > 0).all()):
        raise SaeAmortError("make_problem: magnitudes must be strictly positive (codes are non-negative k-sparse)")
    return values


def mcc(true_codes: Float[Tensor, "n d_true"], codes: Float[Tensor, "n d_inferred"]) -> float:
    """Mean correlation coefficient between true and inferred latents after Hungarian matching.

    Pearson correlations between every true column and every inferred column (fp64, one matmul), matched one-to-one
    by `linear_sum_assignment` on |corr| (maximised). A constant column (a dead latent, true or inferred) correlates
    0 with everything. The mean runs over the non-constant true latents; when there are fewer inferred latents
    than those, the unmatched true latents count 0. So mcc(truth, truth) = 1 and permuting columns changes nothing.
    """
    if true_codes.ndim != 2 or codes.ndim != 2:
        raise SaeAmortError(
            f"mcc expects 2-D [n, d] codes, got shapes {tuple(true_codes.shape)} and {tuple(codes.shape)}"
        )
    if true_codes.shape[0] != codes.shape[0]:
        raise SaeAmortError(f"mcc: true codes have {true_codes.shape[0]} rows, inferred codes {codes.shape[0]}")
    if true_codes.shape[0] < 2:
        raise SaeAmortError("mcc needs at least 2 rows to compute correlations")
    a, live = _unit_columns(true_codes)
    if not bool(live.any()):
        raise SaeAmortError("mcc: every true latent is constant; there is nothing to match")
    b, _ = _unit_columns(codes.to(true_codes.device))
    corr = (a[:, live].T @ b).abs().cpu().numpy()
    rows, cols = linear_sum_assignment(corr, maximize=True)
    return min(1.0, float(corr[rows, cols].sum() / int(live.sum())))


def _unit_columns(codes: Tensor) -> tuple[Tensor, Tensor]:
    """Columns centred and scaled to unit norm (fp64); constant columns become 0. Also the non-constant mask."""
    c = codes.detach().to(torch.float64)
    c = c - c.mean(dim=0, keepdim=True)
    norms = c.norm(dim=0)
    scale = codes.detach().abs().amax(dim=0).to(torch.float64) * codes.shape[0] ** 0.5
    live = norms > 1e-9 * scale
    return torch.where(live, c / torch.where(live, norms, 1.0), 0.0), live


def sae_for_problem(
    problem: SyntheticProblem,
    architecture: Literal["topk", "standard"] = "topk",
    *,
    k: int | None = None,
    threshold: float | None = None,
) -> "SAE":
    """A real SAE-Lens SAE on the true dictionary with the matched encoder `W_enc = atomsᵀ`, `b_dec = 0`.

    "topk": `TopKSAE` keeping the top `k` (default: the problem's k) pre-activations `x·a_j`.
    "standard": `StandardSAE` with `b_enc = −threshold`; by default the threshold sits between the (n·k)-th and
    (n·k+1)-th largest pre-activation over `problem.x`, so the mean L0 on the problem is k.
    """
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    atoms = problem.dictionary.atoms
    d_sae, d_in = atoms.shape
    k = problem.k if k is None else k
    if not isinstance(k, int) or not 0 < k <= d_sae:
        raise SaeAmortError(f"sae_for_problem: k must be an integer in [1, d_sae={d_sae}], got {k!r}")
    dtype = str(atoms.dtype).removeprefix("torch.")
    common = {"d_in": d_in, "d_sae": d_sae, "dtype": dtype, "device": str(atoms.device)}
    if architecture == "topk":
        sae: SAE = TopKSAE(TopKSAEConfig(**common, k=k))
        b_enc = torch.zeros(d_sae, dtype=atoms.dtype, device=atoms.device)
    elif architecture == "standard":
        sae = StandardSAE(StandardSAEConfig(**common))
        if threshold is None:
            threshold = _matched_threshold(problem.x.to(atoms.dtype) @ atoms.T, k)
        b_enc = torch.full((d_sae,), -float(threshold), dtype=atoms.dtype, device=atoms.device)
    else:
        raise SaeAmortError(f"sae_for_problem: architecture must be 'topk' or 'standard', got {architecture!r}")
    with torch.no_grad():
        sae.W_dec.copy_(atoms)
        sae.W_enc.copy_(atoms.T)
        sae.b_enc.copy_(b_enc)
        sae.b_dec.zero_()
    return sae


def _matched_threshold(pre: Tensor, k: int) -> float:
    """The threshold giving mean L0 = k: halfway between the (n·k)-th and (n·k+1)-th largest pre-activation."""
    flat = pre.reshape(-1).float()
    count = pre.shape[0] * k
    if count >= flat.numel():
        return float(flat.min()) - 1.0
    top = torch.topk(flat, count + 1).values
    return float((top[-1] + top[-2]) / 2)


__all__ = ["Magnitude", "SyntheticProblem", "make_problem", "mcc", "sae_for_problem"]
