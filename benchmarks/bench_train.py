"""Training throughput per SAE family on the toy world, as JSON lines.

    python benchmarks/bench_train.py [--tokens 204800] [--batch-size 1024]

Ours: `run_train` (activations streamed from the shard store, per-step JSON log, rich progress). Peer, in the same
run: SAE-Lens' own `SAETrainer` on the same SAE config fed from an in-memory tensor (no store, no logging). The ratio
ours / peer (tokens/s) is our pipeline's overhead; model forward and collection are excluded (the cache is warmed
first).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from saelens_amort.provenance import provenance
from saelens_amort.training.config import ARCHS, TrainConfig
from saelens_amort.training.families import make_training_sae
from saelens_amort.training.run import HELD_OUT_ROWS, run_train


def peer_tokens_per_second(cfg: TrainConfig, acts: torch.Tensor, hook: str) -> float:
    from sae_lens import SAETrainer
    from sae_lens.config import SAETrainerConfig

    from saelens_amort.toy.saes import shuffled_batches

    torch.manual_seed(cfg.seed)
    arch = "topk" if cfg.arch == "loca" else cfg.arch
    sae = make_training_sae(replace(cfg, arch=arch), acts.shape[1], hook, cfg.model)
    steps = cfg.n_steps
    tcfg = SAETrainerConfig(total_training_samples=steps * cfg.batch_size, train_batch_size_samples=cfg.batch_size,
                            lr=cfg.lr, lr_end=cfg.lr, device="cpu", dead_feature_window=max(1, steps // 4),
                            feature_sampling_window=max(1, steps // 4))
    start = time.perf_counter()
    SAETrainer(tcfg, sae, shuffled_batches(acts, cfg.batch_size, cfg.seed)).fit()
    return steps * cfg.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=204_800)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--archs", default=",".join(ARCHS))
    args = parser.parse_args()
    print(json.dumps({"kind": "run", "bench": "train", **provenance(), "args": vars(args)}), flush=True)
    from saelens_amort.activations import CollectConfig, collect_activations, resolve_source
    from saelens_amort.models import load_model

    hook = "blocks.2.hook_resid_post"
    store = collect_activations(load_model("toy"), resolve_source("toy"), CollectConfig(
        hook_name=hook, n_tokens=args.tokens + HELD_OUT_ROWS, context_size=128), None, model_name="toy",
        progress=False)
    acts = store.load(args.tokens).acts.float()
    for arch in args.archs.split(","):
        cfg = TrainConfig(arch=arch, tokens=args.tokens, batch_size=args.batch_size)
        with tempfile.TemporaryDirectory() as tmp:
            ours = run_train(cfg, Path(tmp) / "run", progress=False)["tokens_per_second"]
        peer = peer_tokens_per_second(cfg, acts, hook)
        print(json.dumps({"kind": "train", "arch": arch, "tokens": args.tokens, "ours_tokens_per_second": ours,
                          "peer": "SAETrainer on an in-memory tensor" + (" (global TopK)" if arch == "loca" else ""),
                          "peer_tokens_per_second": peer, "ratio": ours / peer}), flush=True)


if __name__ == "__main__":
    main()
