"""The parameters of a ground-truth feature world, and its presets (DESIGN §10).

A world draws activations `x = Σᵢ sᵢ dᵢ + ε` from known unit atoms `dᵢ ∈ ℝᵈ` and known non-negative codes `s`,
with the statistics that make SAEs go wrong on real models: power-law firing probabilities, parent → child
hierarchies (absorption) and groups of near-parallel atoms (splitting). Every field below is one knob of that draw.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from saelens_amort.errors import SaeAmortError


@dataclass(frozen=True)
class WorldConfig:
    d: int = 128
    """Dimension of the activations."""
    n_features: int = 2048
    """Number of true features (unit atoms)."""
    n_tokens: int = 212_992
    """Activation rows to draw."""
    mean_l0: float = 12.0
    """Expected number of active true features per row (the firing probabilities are scaled to it)."""
    power_law: float = 0.6
    """Firing probability of the feature of frequency rank r is ∝ r^−power_law (0: all equally frequent)."""
    max_prob: float = 0.3
    """No feature fires on more than this fraction of rows."""
    n_parents: int = 64
    """Hierarchies: parent features each owning `children` child features."""
    children: int = 3
    """Children per parent; a child fires only on rows where its parent fires."""
    child_prob: float = 0.3
    """Probability that a child fires given that its parent fires (independently per child)."""
    n_groups: int = 64
    """Groups of near-parallel atoms (the splitting trap)."""
    group_size: int = 3
    """Atoms per near-parallel group."""
    group_cos: tuple[float, float] = (0.7, 0.9)
    """Range of the pairwise cosine inside a group (one value drawn per group)."""
    magnitude_mean: float = 1.0
    """Active codes are |N(magnitude_mean, magnitude_std²)| (non-negative)."""
    magnitude_std: float = 0.3
    noise: float = 0.02
    """Standard deviation of the isotropic Gaussian noise ε per coordinate."""
    seed: int = 0
    shard_tokens: int = 16_384
    """Rows per shard on disk."""

    def __post_init__(self) -> None:
        ints = ("d", "n_features", "n_tokens", "shard_tokens")
        for name in ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise SaeAmortError(f"world: {name} must be a positive integer, got {value!r}")
        for name in ("n_parents", "children", "n_groups", "group_size", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise SaeAmortError(f"world: {name} must be a non-negative integer, got {value!r}")
        if self.n_tokens > 50_000_000:
            raise SaeAmortError(f"world: n_tokens={self.n_tokens} is more than 5e7 rows; build several worlds")
        special = self.n_parents * (1 + self.children) + self.n_groups * self.group_size
        if special > self.n_features:
            raise SaeAmortError(f"world: {self.n_parents} parents × (1 + {self.children} children) and "
                                f"{self.n_groups} groups × {self.group_size} atoms need {special} features; "
                                f"n_features is {self.n_features}")
        if not 0 < self.mean_l0 < self.n_features:
            raise SaeAmortError(f"world: mean_l0 must lie in (0, n_features={self.n_features}): more active features "
                                f"than exist is impossible, got {self.mean_l0}")
        if not 0 < self.max_prob <= 1:
            raise SaeAmortError(f"world: max_prob must lie in (0, 1], got {self.max_prob}")
        if self.mean_l0 > self.max_prob * self.n_features:
            raise SaeAmortError(f"world: mean_l0={self.mean_l0} cannot be reached when no feature fires on more than "
                                f"max_prob={self.max_prob} of rows ({self.max_prob * self.n_features:g} at most)")
        if self.power_law < 0:
            raise SaeAmortError(f"world: power_law must be >= 0, got {self.power_law}")
        if not 0 <= self.child_prob <= 1:
            raise SaeAmortError(f"world: child_prob is a probability, got {self.child_prob}")
        lo, hi = self.group_cos
        if not 0 <= lo <= hi < 1:
            raise SaeAmortError(f"world: group_cos must be a range inside [0, 1), got {self.group_cos}")
        if self.group_size == 1 and self.n_groups:
            raise SaeAmortError("world: a near-parallel group needs group_size >= 2")
        if self.magnitude_std < 0 or self.magnitude_mean <= 0:
            raise SaeAmortError(f"world: magnitudes need magnitude_mean > 0 and magnitude_std >= 0, got "
                                f"{self.magnitude_mean}, {self.magnitude_std}")
        if self.noise < 0:
            raise SaeAmortError(f"world: noise is a standard deviation and must be >= 0, got {self.noise}")

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["group_cos"] = list(self.group_cos)
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorldConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SaeAmortError(f"world: unknown parameters {unknown}; known: {sorted(known)}")
        data = dict(data)
        if "group_cos" in data:
            data["group_cos"] = tuple(float(v) for v in data["group_cos"])
        try:
            return cls(**data)
        except TypeError as e:
            raise SaeAmortError(f"world: {e}") from None


PRESETS: dict[str, WorldConfig] = {
    "small": WorldConfig(),
    "medium": WorldConfig(d=384, n_features=12_288, n_tokens=262_144, mean_l0=32.0, n_parents=256, n_groups=256,
                          seed=1),
}
"""`small`: d 128 with 2 048 true features (shipped with trained SAEs); `medium`: d 384 with 12 288 features."""


def preset(name: str, **overrides: Any) -> WorldConfig:
    try:
        base = PRESETS[name]
    except KeyError:
        raise SaeAmortError(f"unknown world preset {name!r}; presets: {', '.join(PRESETS)}") from None
    return replace(base, **overrides) if overrides else base
