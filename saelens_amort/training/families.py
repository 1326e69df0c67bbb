"""SAE-Lens training SAEs for every family this toolkit trains, built from one TrainConfig."""

from __future__ import annotations

from typing import Any

from saelens_amort.training.config import TrainConfig


def make_training_sae(cfg: TrainConfig, d_in: int, hook_name: str, model_name: str, k: int | None = None):
    """The SAE-Lens training SAE of `cfg.arch` ('loca' starts as its global TopK SAE with k = sum(budgets))."""
    from sae_lens import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        GatedTrainingSAE,
        GatedTrainingSAEConfig,
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

    cfg.check_fits(d_in)
    d_sae = d_in * cfg.expansion
    meta = SAEMetadata(model_name=model_name, hook_name=hook_name, context_size=cfg.context_size, prepend_bos=True,
                       dataset_path=cfg.source or "")
    common: dict[str, Any] = dict(d_in=d_in, d_sae=d_sae, metadata=meta, device=cfg.device,
                                  normalize_activations=cfg.normalize_activations)
    arch = cfg.arch
    if arch == "standard":
        return StandardTrainingSAE(StandardTrainingSAEConfig(**common, l1_coefficient=cfg.l1_coefficient,
                                                             l1_warm_up_steps=cfg.l1_warm_up_steps))
    if arch == "gated":
        return GatedTrainingSAE(GatedTrainingSAEConfig(**common, l1_coefficient=cfg.l1_coefficient,
                                                       l1_warm_up_steps=cfg.l1_warm_up_steps))
    if arch == "jumprelu":
        return JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(**common, l0_coefficient=cfg.l0_coefficient,
                                                             l0_warm_up_steps=cfg.l1_warm_up_steps))
    if arch == "batchtopk":
        return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common, k=cfg.k))
    if arch == "matryoshka_batchtopk":
        widths = [d_sae // 8, d_sae // 4, d_sae // 2, d_sae]
        return MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(**common, k=cfg.k,
                                                                                   matryoshka_widths=widths))
    return TopKTrainingSAE(TopKTrainingSAEConfig(**common, k=k or (sum(cfg.budgets) if arch == "loca" else cfg.k)))
