"""What `saeamort select-latents`, `tpp` and `interpret` are asked to do: the TppConfig, checked when built and
importable without torch, so a bad option answers at once."""

from __future__ import annotations

from dataclasses import dataclass

from saelens_amort.catalog import check_modes
from saelens_amort.devices import parse_device
from saelens_amort.errors import SaeAmortError

POOLING = ("mean", "last")
"""How a document's token codes are pooled into one vector."""


@dataclass(frozen=True)
class TppConfig:
    model: str = "toy"
    layer: int | None = 2
    hook: str | None = None
    sae: str | None = None
    """SAE spec (default for the toy: toy/topk)."""
    modes: tuple[str, ...] = ("amortized", "semi", "unamortized")
    tokens: int = 20_000
    calib_tokens: int = 1024
    source: str | None = None
    pooling: str = "mean"
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.pooling not in POOLING:
            raise SaeAmortError(f"--pooling must be one of {', '.join(POOLING)}, got {self.pooling!r}")
        check_modes(self.modes)
        if self.tokens <= 0 or self.calib_tokens <= 0:
            raise SaeAmortError("--tokens must be positive")
        if self.tokens < self.calib_tokens:  # λ-modes calibrate on the first calib_tokens rows of the collection
            raise SaeAmortError(f"--tokens {self.tokens} is below the {self.calib_tokens} rows λ is calibrated on; "
                                f"pass --tokens {self.calib_tokens} or more")
        parse_device(self.device)

    def resolved_sae(self) -> str:
        if self.sae:
            return self.sae
        if self.model == "toy":
            return "toy/topk"
        raise SaeAmortError("--sae is required for models other than the toy")


def check_top_ms(top_ms) -> None:
    """The numbers of ablated latents M: at least one, each ≥ 1 (torch-free: the command line checks them first)."""
    if not top_ms or any(m < 1 for m in top_ms):
        raise SaeAmortError(f"--top-m needs positive integers, got {list(top_ms)}")
