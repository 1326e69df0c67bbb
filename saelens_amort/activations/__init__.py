"""Activation collection: text sources, TransformerLens hooks, and an atomic, resumable on-disk shard store."""

from saelens_amort.activations.collect import (
    CollectConfig,
    collect_activations,
    default_cache_dir,
    hook_layer,
)
from saelens_amort.activations.sources import TextSource, resolve_source
from saelens_amort.activations.store import ActivationBatch, ActivationStore

__all__ = [
    "ActivationBatch",
    "ActivationStore",
    "CollectConfig",
    "TextSource",
    "collect_activations",
    "default_cache_dir",
    "hook_layer",
    "resolve_source",
]
