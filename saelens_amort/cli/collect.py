"""`saeamort collect`: cache a hook's activations on disk as streamable shards."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from saelens_amort.cli.app import app
from saelens_amort.cli.options import (
    DEVICE, HOOK, LAYER, MAX_TOKENS, MODEL, SEED, count_option, out_option, resolve_layer, source_option,
    tokens_option,
)


def _storage_dtype(value: str) -> str:
    from saelens_amort.devices import parse_storage_dtype  # torch-free: a typo answers before torch loads

    return parse_storage_dtype(value, "--dtype")


@app.command()
def collect(
    model: str = MODEL, layer: Optional[int] = LAYER, hook: Optional[str] = HOOK,
    source: str = source_option("toy", "toy | toy:news | toy:code | FILE.txt/.jsonl/.parquet | "
                                       "hf:NAME[:CONFIG][@SPLIT]."),
    tokens: int = tokens_option(100_000, "Activation rows to collect (BOS and padding excluded)."),
    out: Optional[Path] = out_option(None, "Store directory (default: a keyed folder in the cache)."),
    context_size: int = count_option(128, "Tokens per sequence, BOS included; longer documents are split.", low=2),
    batch_size: int = count_option(16, "Sequences per forward pass."),
    shard_tokens: int = count_option(65_536, "Activation rows per shard file.", high=MAX_TOKENS),
    dtype: str = typer.Option("float32", help="Storage dtype: float32, float16 or bfloat16.",
                              callback=_storage_dtype),
    seed: int = SEED, device: str = DEVICE,
) -> None:
    """Collect activations at one hook into an atomic, resumable shard store (a repeat request reads the cache)."""
    layer = resolve_layer(model, layer, hook)  # torch-free: a model without a default layer answers at once
    from saelens_amort.runners.collect import run_collect  # loads torch

    store = run_collect(
        model,
        layer=layer,
        hook=hook,
        source=source,
        cfg_kwargs=dict(
            n_tokens=tokens,
            context_size=context_size,
            batch_size=batch_size,
            shard_tokens=shard_tokens,
            dtype=dtype,
            seed=seed,
        ),
        out=out,
        device=device,
    )
    Console().print(
        f"[bold]{store.n_tokens}[/] activations of [bold]{store.hook_name}[/] (d={store.d_in}) in {store.path}"
    )
