"""Collection cost: running only up to the hook vs a full forward pass, on a random pythia-160m-shaped model.

Prints JSON lines: one per variant (`tokens_per_s`, median over repeats) and a final line with the speedup of our
path (`run_to_hook`: stop_at_layer=L+1 and an early exit at the hook) over a full `run_with_cache` with the same
names_filter. Both must give identical activations. No download: the model is built from a HookedTransformerConfig.

    python benchmarks/bench_collect.py [--tokens 1024] [--repeats 3] [--seq-len 128]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from saelens_amort.activations.collect import hook_layer, run_to_hook
from saelens_amort.provenance import versions

HOOK = "blocks.8.hook_resid_post"
TARGET_SPEEDUP = 1.3


def pythia_160m_shaped() -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50304, n_ctx=2048, act_fn="gelu",
        normalization_type="LN", positional_embedding_type="rotary", rotary_dim=16, parallel_attn_mlp=True,
        original_architecture="GPTNeoXForCausalLM", seed=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return HookedTransformer(cfg).eval()


def median_seconds(fn: Callable[[], torch.Tensor], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024, help="Tokens per forward pass (batch = tokens / seq-len).")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = pythia_160m_shaped()
    batch = max(1, args.tokens // args.seq_len)
    tokens = torch.randint(0, model.cfg.d_vocab, (batch, args.seq_len))
    n_tokens = tokens.numel()
    stop = hook_layer(HOOK) + 1

    def ours() -> torch.Tensor:
        return run_to_hook(model, tokens, HOOK, attention_mask=torch.ones_like(tokens))

    def cache(stop_at_layer: int | None) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with torch.no_grad():
                _, c = model.run_with_cache(tokens, names_filter=HOOK, stop_at_layer=stop_at_layer)
            return c[HOOK]
        return run

    variants = {
        "run_to_hook": ours,
        "run_with_cache_full": cache(None),
        "run_with_cache_stop_at_layer": cache(stop),
    }
    reference = variants["run_with_cache_full"]()
    identical = {name: bool(torch.equal(fn(), reference)) for name, fn in variants.items()}
    speed = {}
    common = {"bench": "collect", "hook": HOOK, "batch": batch, "seq_len": args.seq_len,
              "threads": torch.get_num_threads(), "repeats": args.repeats}
    for name, fn in variants.items():
        seconds = median_seconds(fn, args.repeats)
        speed[name] = n_tokens / seconds
        print(json.dumps({**common, "variant": name, "seconds": round(seconds, 4),
                          "tokens_per_s": round(speed[name], 1), "identical_to_full": identical[name]}), flush=True)
    print(json.dumps({**common, "variant": "summary",
                      "speedup": round(speed["run_to_hook"] / speed["run_with_cache_full"], 3),
                      "target": TARGET_SPEEDUP, "identical": identical["run_to_hook"],
                      "torch": versions()["torch"], "transformer_lens": versions()["transformer-lens"]}), flush=True)


if __name__ == "__main__":
    main()
