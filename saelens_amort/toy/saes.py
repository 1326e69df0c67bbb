"""Train the toy SAEs, one per family, with SAE-Lens' own training classes and trainer.

Every family is saved in SAE-Lens' inference format (`save_inference_model`), so BatchTopK and Matryoshka
BatchTopK load as JumpReLU SAEs with one global threshold, exactly as SAE-Lens ships them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from sae_lens import (
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    GatedTrainingSAE,
    GatedTrainingSAEConfig,
    JumpReLUTrainingSAE,
    JumpReLUTrainingSAEConfig,
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
    SAETrainer,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
    TrainingSAE,
)
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.sae import SAEMetadata

from saelens_amort.errors import SaeAmortError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToySAEConfig:
    expansion: int = 8
    """d_sae / d_in."""
    k: int = 16
    """Active latents per token for the TopK families (and the L0 the L1/L0-penalised ones are tuned near)."""
    steps: int = 1500
    """Optimiser steps per SAE."""
    batch_size: int = 1024
    """Activation rows per step."""
    lr: float = 1e-3
    """Adam learning rate (constant after a short warm-up, linear decay over the last 20 %)."""
    l1_coefficient: float = 3.0
    """Standard and gated SAEs' L1 penalty (on decoder-norm-weighted codes, SAE-Lens' convention)."""
    l0_coefficient: float = 2.0
    """JumpReLU SAE's L0 penalty (trained on norm-scaled inputs; SAE-Lens folds the scale back in when done)."""
    seed: int = 0
    """Initialisation and shuffling seed."""

    def __post_init__(self) -> None:
        if self.expansion < 1 or self.k < 1 or self.steps < 1 or self.batch_size < 1:
            raise SaeAmortError("toy SAE expansion, k, steps and batch size must be positive")


def _metadata(hook_name: str) -> SAEMetadata:
    return SAEMetadata(model_name="toy", hook_name=hook_name, context_size=128, prepend_bos=True, dataset_path="toy")


def _make(family: str, d_in: int, cfg: ToySAEConfig, hook_name: str) -> TrainingSAE:
    d_sae = d_in * cfg.expansion
    common = dict(d_in=d_in, d_sae=d_sae, metadata=_metadata(hook_name))
    warm = max(1, cfg.steps // 10)
    builders: dict[str, Callable[[], TrainingSAE]] = {
        "standard": lambda: StandardTrainingSAE(
            StandardTrainingSAEConfig(**common, l1_coefficient=cfg.l1_coefficient, l1_warm_up_steps=warm)
        ),
        "topk": lambda: TopKTrainingSAE(TopKTrainingSAEConfig(**common, k=cfg.k)),
        "batchtopk": lambda: BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common, k=cfg.k)),
        "matryoshka_batchtopk": lambda: MatryoshkaBatchTopKTrainingSAE(
            MatryoshkaBatchTopKTrainingSAEConfig(
                **common, k=cfg.k, matryoshka_widths=[d_sae // 8, d_sae // 4, d_sae // 2, d_sae]
            )
        ),
        "jumprelu": lambda: JumpReLUTrainingSAE(
            JumpReLUTrainingSAEConfig(
                **common,
                l0_coefficient=cfg.l0_coefficient,
                l0_warm_up_steps=warm,
                normalize_activations="expected_average_only_in",  # its threshold init and bandwidth assume ‖x‖≈√d
            )
        ),
        "gated": lambda: GatedTrainingSAE(
            GatedTrainingSAEConfig(**common, l1_coefficient=cfg.l1_coefficient, l1_warm_up_steps=warm)
        ),
    }
    if family not in builders:
        raise SaeAmortError(f"unknown toy SAE family {family!r}; choose from {sorted(builders)}")
    return builders[family]()


def shuffled_batches(acts: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless shuffled minibatches over an in-memory activation matrix (the trainer's data provider)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        for idx in torch.randperm(acts.shape[0], generator=gen).split(batch_size):
            if len(idx) == batch_size:
                yield acts[idx]


def train_toy_sae(
    family: str, acts: torch.Tensor, hook_name: str, cfg: ToySAEConfig, out_dir: Path
) -> dict[str, float]:
    """Train one family on `acts` [n, d_in] and save it in SAE-Lens inference format under `out_dir`."""
    torch.manual_seed(cfg.seed)
    sae = _make(family, acts.shape[1], cfg, hook_name)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=cfg.steps * cfg.batch_size,
        train_batch_size_samples=cfg.batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr / 10,
        lr_warm_up_steps=max(1, cfg.steps // 20),
        lr_decay_steps=cfg.steps // 5,
        dead_feature_window=max(1, cfg.steps // 4),
        feature_sampling_window=max(1, cfg.steps // 4),
        device="cpu",
    )
    start = time.perf_counter()
    trainer = SAETrainer(trainer_cfg, sae, shuffled_batches(acts, cfg.batch_size, cfg.seed))
    trainer.fit()
    seconds = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    sae.save_inference_model(out_dir)
    return {"train_seconds": seconds, "l0": float(sae.cfg.metadata.l0 or 0.0)}
