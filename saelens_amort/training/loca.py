"""LocA-SAE (locally amortized SAE, DESIGN §6) as an SAE-Lens architecture: "loca".

The latents are split into G groups by angular variance; every group's encoder runs on every token (no routing) with
its own TopK budget, and one decoder is shared:

    z = ⋃_g TopK_{k_g}(ReLU(x' W_enc[:, g] + b_enc[g]))          x̂ = z W_dec + b_dec

It is TopK with a per-group budget, so it reuses SAE-Lens' TopK machinery (decoder-norm rescaling folded at save, the
dead-latent auxiliary loss, whose gradient is real). The group of each latent is a buffer (`group`, saved in the
weights) and the budgets are config, so a saved LocA-SAE reloads exactly. Registration is idempotent.

Construction from a trained global TopK SAE (`loca_from_topk`): AVar_j = 1 − ‖mean of the unit-normalised inputs on
which latent j fires‖ (latents that never fire get AVar 1); latents sorted by AVar, highest first, split into G equal
groups; group g gets budgets[g] (paper: 6,5,4,3,3,2,2,1); all weights copied from the global SAE.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from sae_lens import TopKSAE, TopKSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY, register_sae_class, \
    register_sae_training_class
from torch import Tensor

from saelens_amort.training.config import PAPER_BUDGETS, check_budgets

ARCHITECTURE = "loca"


def contiguous_groups(d_sae: int, n_groups: int) -> Tensor:
    """Latent j → group j · G // d_sae (equal contiguous groups; the placeholder until groups are assigned)."""
    return torch.arange(d_sae) * n_groups // d_sae


def group_topk(pre: Tensor, group: Tensor, budgets: Sequence[int]) -> Tensor:
    """Per group g: keep the top budgets[g] pre-activations of its latents, ReLU; zero elsewhere."""
    out = torch.zeros_like(pre)
    for g, k in enumerate(budgets):
        idx = (group == g).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        vals, pos = pre.index_select(-1, idx).topk(min(int(k), idx.numel()), dim=-1, sorted=False)
        out = out.scatter(-1, idx[pos], vals.relu())
    return out


@dataclass
class _Budgets:
    """The LocA config fields on top of TopK's (k is derived: the sum of the budgets)."""

    budgets: list[int] = field(default_factory=lambda: list(PAPER_BUDGETS))

    def __post_init__(self) -> None:
        super().__post_init__()
        self.k = int(sum(self.budgets))

    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


@dataclass
class LocASAEConfig(_Budgets, TopKSAEConfig):
    pass


@dataclass
class LocATrainingSAEConfig(_Budgets, TopKTrainingSAEConfig):
    pass


class _Grouped:
    """Shared by the inference and training classes: the group buffer and the group TopK."""

    def _init_groups(self) -> None:
        check_budgets(self.cfg.budgets, self.cfg.d_sae)
        device = "cpu" if str(self.cfg.device) == "meta" else self.cfg.device
        self.register_buffer("group", contiguous_groups(self.cfg.d_sae, len(self.cfg.budgets)).to(device))

    def get_activation_fn(self) -> Callable[[Tensor], Tensor]:
        return lambda pre: group_topk(pre, self.group, self.cfg.budgets)

    def process_state_dict_for_loading(self, state_dict: dict[str, Tensor]) -> None:
        super().process_state_dict_for_loading(state_dict)
        if "group" in state_dict:  # SAE-Lens' loader casts every tensor to the SAE's float dtype
            state_dict["group"] = state_dict["group"].round().long()


class LocASAE(_Grouped, TopKSAE):
    """Inference LocA-SAE (SAE-Lens `SAE`): `encode` is the group TopK of the module docstring."""

    def __init__(self, cfg: LocASAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self._init_groups()


class LocATrainingSAE(_Grouped, TopKTrainingSAE):
    """Training LocA-SAE (SAE-Lens `TrainingSAE`, driven by `SAETrainer`)."""

    def __init__(self, cfg: LocATrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self._init_groups()


def register() -> None:
    """Register "loca" with SAE-Lens (no-op when already registered: re-imports never raise)."""
    if ARCHITECTURE not in SAE_CLASS_REGISTRY:
        register_sae_class(ARCHITECTURE, LocASAE, LocASAEConfig)
    if ARCHITECTURE not in SAE_TRAINING_CLASS_REGISTRY:
        register_sae_training_class(ARCHITECTURE, LocATrainingSAE, LocATrainingSAEConfig)


register()


@torch.no_grad()
def angular_variance(sae, acts: Tensor, batch_size: int = 4096) -> Tensor:
    """AVar_j = 1 − ‖mean of unit-normalised x over the rows where latent j fires‖ (1 where it never fires)."""
    total = torch.zeros(sae.cfg.d_sae, acts.shape[1], dtype=torch.float64)
    count = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    for x in acts.split(batch_size):
        fires = (sae.encode(x) > 0).double()
        unit = x.double() / x.double().norm(dim=1, keepdim=True).clamp_min(1e-12)
        total += fires.T @ unit
        count += fires.sum(0)
    mean = total / count.clamp_min(1)[:, None]
    return torch.where(count > 0, 1 - mean.norm(dim=1), torch.ones_like(count)).float()


def assign_groups(avar: Tensor, n_groups: int) -> Tensor:
    """Group of each latent: sorted by AVar (highest first, ties by index), G equal consecutive groups."""
    order = torch.sort(-avar, stable=True).indices
    group = torch.empty_like(order)
    group[order] = torch.arange(avar.numel()) * n_groups // avar.numel()
    return group


@torch.no_grad()
def loca_from_topk(topk: TopKTrainingSAE, acts: Tensor, budgets: Sequence[int] = PAPER_BUDGETS) -> LocATrainingSAE:
    """A LocA training SAE initialised from a trained global TopK training SAE (module docstring)."""
    cfg_dict = {f: getattr(topk.cfg, f) for f in topk.cfg.__dataclass_fields__ if f != "k"}
    loca = LocATrainingSAE(LocATrainingSAEConfig(**cfg_dict, budgets=[int(k) for k in budgets]))
    loca.load_state_dict({**topk.state_dict(), "group": loca.group}, strict=True)
    loca.group.copy_(assign_groups(angular_variance(topk, acts), len(budgets)))
    return loca
