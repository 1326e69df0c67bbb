"""`saeamort collect`: cache a hook's activations on disk as streamable shards."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from saelens_amort.cli import app


@app.command()
def collect(
    model: str = typer.Option("toy", help="TransformerLens name, local HF checkpoint directory, or 'toy'."),
    layer: Optional[int] = typer.Option(None, help="Block whose hook_resid_post to read (blocks.L.hook_resid_post)."),
    hook: Optional[str] = typer.Option(None, help="Any hook name instead of --layer, e.g. blocks.2.hook_mlp_out."),
    source: str = typer.Option(
        "toy", help="toy | toy:news | toy:code | FILE.txt/.jsonl/.parquet | hf:NAME[:CONFIG][@SPLIT]."
    ),
    tokens: int = typer.Option(100_000, help="Activation rows to collect (BOS and padding excluded)."),
    out: Optional[Path] = typer.Option(None, help="Store directory (default: a keyed folder in the cache)."),
    context_size: int = typer.Option(128, help="Tokens per sequence, BOS included; longer documents are split."),
    batch_size: int = typer.Option(16, help="Sequences per forward pass."),
    shard_tokens: int = typer.Option(65_536, help="Activation rows per shard file."),
    dtype: str = typer.Option("float32", help="Storage dtype: float32, float16 or bfloat16."),
    seed: int = typer.Option(0, help="Seed of the toy corpus stream."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
) -> None:
    """Collect activations at one hook into an atomic, resumable shard store (a repeat request reads the cache)."""
    from saelens_amort.runners.collect import run_collect

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
