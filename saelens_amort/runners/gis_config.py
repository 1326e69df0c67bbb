"""What `saeamort gis` is asked to do: the GisConfig, checked when built and importable without torch, so a bad
option answers at once."""

from __future__ import annotations

from dataclasses import dataclass

from saelens_amort.catalog import check_modes
from saelens_amort.devices import parse_device
from saelens_amort.errors import SaeAmortError

KINDS = ("steer", "ablate")
"""Interventions: steer along the latents' decoder directions, or ablate the latents."""


@dataclass(frozen=True)
class GisConfig:
    model: str = "toy"
    sae: str = "toy/topk"
    layer: int = 2
    latents: tuple[int, ...] = ()
    class_id: int | None = None
    kind: str = "steer"
    mode: str = "amortized"
    kl_targets: tuple[float, ...] = (0.33,)
    prompts: tuple[str, ...] = ()
    """Empty: the first words of `n_prompts` documents of the source."""
    n_prompts: int = 4
    max_new_tokens: int = 16
    sequences: int = 16
    context_size: int = 64
    probe_tokens: int = 12_000
    source: str | None = None
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SaeAmortError(f"--kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not self.kl_targets or any(not 0 < t < float("inf") for t in self.kl_targets):
            raise SaeAmortError(f"--kl needs positive finite targets, got {list(self.kl_targets)}")
        check_modes([self.mode])
        parse_device(self.device)
