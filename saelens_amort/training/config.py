"""What `saeamort train` is asked to do: the TrainConfig (family, data, schedule, LocA budgets), checked when built
and importable without torch or SAE-Lens, so a bad option answers at once."""

from __future__ import annotations

import math

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from saelens_amort.config_file import read_yaml_mapping, typed_fields
from saelens_amort.devices import parse_device
from saelens_amort.errors import SaeAmortError
from saelens_amort.source_spec import check_source

PAPER_BUDGETS = (6, 5, 4, 3, 3, 2, 2, 1)
"""LocA-SAE's TopK budget per angular-variance group (DESIGN §6)."""
ARCHS = ("standard", "topk", "batchtopk", "matryoshka_batchtopk", "jumprelu", "gated", "loca")
K_ARCHS = ("topk", "batchtopk", "matryoshka_batchtopk")


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "topk"
    model: str = "toy"
    layer: int | None = 2
    hook: str | None = None
    source: str | None = None
    tokens: int = 204_800
    """Training tokens (steps = tokens // batch_size unless `steps` is given; with `activations`, `steps` may pass
    over the store's first `tokens` rows several times)."""
    steps: int | None = None
    batch_size: int = 1024
    expansion: int = 8
    k: int = 16
    """Active latents per token (TopK families)."""
    budgets: tuple[int, ...] = PAPER_BUDGETS
    """LocA: TopK budget per angular-variance group (G = len(budgets))."""
    loca_pretrain_fraction: float = 0.5
    """LocA: share of the steps spent pretraining the global TopK SAE (k = sum of budgets)."""
    l1_coefficient: float = 3.0
    l1_warm_up_steps: int = 0
    l0_coefficient: float = 2.0
    lr: float = 1e-3
    lr_end: float | None = None
    lr_scheduler: str = "constant"
    lr_warm_up_steps: int = 0
    lr_decay_steps: int = 0
    normalize_activations: str = "none"
    checkpoint_every: int = 0
    """Save a checkpoint every this many steps (0: none); `saeamort dynamics` reads them."""
    context_size: int = 128
    live: bool = False
    """Train on activations computed on the fly from the model (nothing cached) instead of the activation cache."""
    activations: str | None = None
    """Train on this activation store (e.g. a ground-truth world) instead of the model's activations."""
    seed: int = 0
    device: str = "cpu"
    wandb: bool = False

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise SaeAmortError(f"unknown architecture {self.arch!r}; registered: {', '.join(ARCHS)}")
        if min(self.tokens, self.batch_size, self.expansion, self.k) < 1 or (self.steps is not None and self.steps < 1):
            raise SaeAmortError("--tokens, --batch-size, --expansion, --k and --steps must be positive")
        need = self.n_steps * self.batch_size
        if need > self.tokens and self.activations is None:  # a fixed store may be passed over several times
            raise SaeAmortError(f"{self.n_steps} steps of {self.batch_size} tokens need {need} training tokens; "
                                f"--tokens is {self.tokens} (pass --tokens {need} or fewer --steps)")
        if self.activations is not None and self.live:
            raise SaeAmortError("--activations trains on a store; it cannot be combined with --live")
        for name in ("lr_warm_up_steps", "l1_warm_up_steps"):
            if getattr(self, name) and getattr(self, name) >= self.n_steps:
                raise SaeAmortError(f"{name}={getattr(self, name)} is not below the {self.n_steps} training steps: the "
                                    "SAE would never leave warm-up; train longer (--tokens) or warm up less")
        if self.checkpoint_every < 0:
            raise SaeAmortError("--checkpoint-every must be ≥ 0")
        for name in ("lr", "lr_end"):  # torch's optimiser raises on a negative or NaN rate; inf trains NaN weights
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise SaeAmortError(f"--{name.replace('_', '-')} must be a positive finite number, got {value}")
        parse_device(self.device)
        if self.source is not None:
            check_source(self.source)

    @property
    def n_steps(self) -> int:
        return self.steps if self.steps is not None else self.tokens // self.batch_size

    def check_fits(self, d_in: int) -> None:
        d_sae = d_in * self.expansion
        if self.arch in K_ARCHS and self.k > d_sae:
            raise SaeAmortError(f"k={self.k} exceeds d_sae={d_sae} (d_in {d_in} × expansion {self.expansion})")
        if self.arch == "matryoshka_batchtopk" and d_sae % 8:
            raise SaeAmortError(f"matryoshka widths d_sae/8, /4, /2, 1 need d_sae divisible by 8, got {d_sae}")
        if self.arch == "loca":
            check_budgets(self.budgets, d_sae)

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["budgets"] = list(self.budgets)
        return d

    @classmethod
    def from_yaml(cls, path: Path, **overrides: Any) -> "TrainConfig":
        """A recipe file (keys = TrainConfig fields, values of their types), then the given options on top."""
        data = typed_fields(cls, read_yaml_mapping(path, "--config"), f"--config {path}")
        return cls(**{**data, **{k: v for k, v in overrides.items() if v is not None}})


def check_budgets(budgets: Sequence[int], d_sae: int) -> None:
    if not budgets or any(int(k) < 1 for k in budgets):
        raise SaeAmortError(f"LocA budgets must be positive integers, got {list(budgets)}")
    if len(budgets) > d_sae or max(budgets) > d_sae // len(budgets):
        raise SaeAmortError(f"LocA budgets {list(budgets)} do not fit d_sae={d_sae}: each of the {len(budgets)} "
                            f"groups has {d_sae // len(budgets)} latents")
