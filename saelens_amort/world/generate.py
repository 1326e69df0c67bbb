"""Drawing a ground-truth feature world: atoms, firing structure, and codes chunk by chunk (DESIGN §10).

Structure (drawn once from `seed`):
- **atoms**: unit Gaussian directions in ℝᵈ; inside each near-parallel group, atoms are `√ρ·q₀ + √(1−ρ)·qⱼ` on an
  orthonormal set {q₀, qⱼ}, so every pair in the group has cosine exactly ρ (ρ drawn per group from `group_cos`);
- **firing probabilities**: root features get `c·r^−power_law` for a random frequency rank r, clipped at `max_prob`,
  with c chosen so the expected L0 (children included) is `mean_l0`; parents are drawn among the most frequent roots;
- **hierarchy**: a child fires only where its parent fires, then with probability `child_prob`.

Rows are drawn in chunks from a generator seeded by (seed, chunk), so a chunk is the same whichever order or process
draws it. Magnitudes are |N(magnitude_mean, magnitude_std²)|; x = s·D + noise·N(0, I), computed in fp64.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from saelens_amort.world.config import WorldConfig


class WorldStructure(NamedTuple):
    atoms: Float[Tensor, "n_features d"]
    """Unit-norm true atoms (fp32)."""
    probs: Float[Tensor, " n_features"]
    """Marginal firing probability of each feature (children: parent's × child_prob)."""
    parent: Int[Tensor, " n_features"]
    """Index of each feature's parent, −1 for a root."""
    group: Int[Tensor, " n_features"]
    """Index of each feature's near-parallel group, −1 when in none."""


def draw_structure(cfg: WorldConfig) -> WorldStructure:
    """Atoms, firing probabilities, hierarchy and groups of `cfg`, deterministic in `cfg.seed`."""
    gen = torch.Generator().manual_seed(cfg.seed)
    n, f64 = cfg.n_features, torch.float64
    order = torch.randperm(n, generator=gen)
    n_children = cfg.n_parents * cfg.children
    children = order[:n_children]
    rest = order[n_children:]

    # Root probabilities from a random frequency rank; parents are among the most frequent roots.
    n_roots = rest.numel()
    ranks = torch.randperm(n_roots, generator=gen).to(f64) + 1
    weight = ranks ** -cfg.power_law
    by_freq = rest[torch.argsort(weight, descending=True)]
    pool = by_freq[: max(cfg.n_parents, min(n_roots, 4 * cfg.n_parents))]
    parents = pool[torch.randperm(pool.numel(), generator=gen)[: cfg.n_parents]]
    parent = torch.full((n,), -1, dtype=torch.long)
    parent[children] = parents.repeat_interleave(cfg.children)

    root_w = torch.zeros(n, dtype=f64)
    root_w[rest] = weight
    scale = _scale_to_l0(root_w, parent, cfg)
    probs = (scale * root_w).clamp(max=cfg.max_prob)
    probs[children] = probs[parent[children]] * cfg.child_prob

    # Near-parallel groups among the roots that are not parents (so the two traps stay apart).
    is_parent = torch.zeros(n, dtype=torch.bool)
    is_parent[parents] = True
    plain = rest[~is_parent[rest]]
    plain = plain[torch.randperm(plain.numel(), generator=gen)]
    group = torch.full((n,), -1, dtype=torch.long)
    atoms = torch.randn(n, cfg.d, generator=gen, dtype=f64)
    lo, hi = cfg.group_cos
    for g in range(cfg.n_groups):
        members = plain[g * cfg.group_size:(g + 1) * cfg.group_size]
        group[members] = g
        rho = lo + (hi - lo) * float(torch.rand((), generator=gen, dtype=f64))
        basis, _ = torch.linalg.qr(torch.randn(cfg.d, cfg.group_size + 1, generator=gen, dtype=f64))
        atoms[members] = rho**0.5 * basis[:, 0] + (1 - rho) ** 0.5 * basis[:, 1:].T
    atoms = atoms / atoms.norm(dim=1, keepdim=True)
    return WorldStructure(atoms.float(), probs.float(), parent, group)


def _scale_to_l0(root_w: Tensor, parent: Tensor, cfg: WorldConfig) -> float:
    """The factor c with E[L0] = Σ_roots min(c·w, max_prob) · (1 + child_prob · #children) = mean_l0 (bisection)."""
    n_kids = torch.zeros_like(root_w)
    kids = parent >= 0
    n_kids.index_add_(0, parent[kids], torch.ones(int(kids.sum()), dtype=root_w.dtype))
    per_root = 1 + cfg.child_prob * n_kids

    def expected_l0(c: float) -> float:
        return float(((c * root_w).clamp(max=cfg.max_prob) * per_root).sum())

    lo, hi = 0.0, 1.0
    while expected_l0(hi) < cfg.mean_l0:
        hi *= 2
        if hi > 1e12:  # every root at max_prob and still short
            return hi
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_l0(mid) < cfg.mean_l0 else (lo, mid)
    return hi


class WorldChunk(NamedTuple):
    x: Float[Tensor, "n d"]
    codes: Float[Tensor, "n n_features"]
    """True codes (dense, fp32); zero where a feature is silent."""


def draw_chunk(cfg: WorldConfig, structure: WorldStructure, chunk: int, n_rows: int) -> WorldChunk:
    """Rows of chunk `chunk` (its own generator, seeded by the world's seed and the chunk index)."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7919 * (chunk + 1))
    probs = structure.probs.to(torch.float64)
    parent = structure.parent
    active: Bool[Tensor, "n n_features"] = torch.rand(n_rows, cfg.n_features, generator=gen, dtype=torch.float64) < probs
    kids = parent >= 0
    # A child's marginal is parent·child_prob: redraw it conditionally on its parent.
    child_draw = torch.rand(n_rows, int(kids.sum()), generator=gen, dtype=torch.float64) < cfg.child_prob
    active[:, kids] = active[:, parent[kids]] & child_draw
    rows, cols = torch.nonzero(active, as_tuple=True)  # row-major: CSR order
    mags = (cfg.magnitude_mean + cfg.magnitude_std * torch.randn(rows.numel(), generator=gen,
                                                                 dtype=torch.float64)).abs()
    codes = torch.zeros(n_rows, cfg.n_features, dtype=torch.float64)
    codes[rows, cols] = mags
    x = codes @ structure.atoms.to(torch.float64)
    if cfg.noise > 0:
        x = x + cfg.noise * torch.randn(n_rows, cfg.d, generator=gen, dtype=torch.float64)
    return WorldChunk(x.float(), codes.float())
