"""Inference-stage throughput with 1 process vs 2 processes (torchrun, gloo) on this machine, as JSON lines.

    python benchmarks/bench_distributed.py [--rows 8192] [--sae toy/standard]

The stage is what `eval` distributes: unamortized solves (working-set solver, λ calibrated once to the encoder's L0)
over the rows of an activation store. Baseline: one process with all cores as torch threads. Peer run: torchrun with
2 processes, 1 thread each, each solving its contiguous half (as `eval` splits batches); throughput = rows / the
slowest rank's time. Target ratio ≥ 1.6.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

TARGET = 1.6


def stage(rows: int, sae_spec: str, batch: int) -> tuple[int, float]:
    from saelens_amort import distributed as dist
    from saelens_amort.inference import calibrate_lambda, infer
    from saelens_amort.saes import load_sae

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from helpers import toy_activations

    x = toy_activations(n_docs=rows // 48 + 8, ctx=64)[:rows]
    sae = load_sae(sae_spec)
    lam = calibrate_lambda(x[:1024], sae, "unamortized").lam
    batches = list(x.split(batch))
    mine = dist.block(len(batches))
    dist.barrier()
    start = time.perf_counter()
    done = 0
    for i in mine:
        done += infer(batches[i], sae, "unamortized", lam=lam).codes.shape[0]
    return done, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--sae", default="toy/standard")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        from saelens_amort import distributed as dist

        dist.init("cpu")
        result = dist.gather(stage(args.rows, args.sae, args.batch))
        if dist.is_main():
            print(json.dumps({"rows": sum(r for r, _ in result), "seconds": max(t for _, t in result)}))
        return
    from saelens_amort.provenance import provenance

    print(json.dumps({"kind": "run", "bench": "distributed", **provenance(), "args": vars(args),
                      "cores": os.cpu_count()}), flush=True)
    torch.set_num_threads(os.cpu_count() or 1)
    rows, seconds = stage(args.rows, args.sae, args.batch)
    one = rows / seconds
    print(json.dumps({"kind": "single", "processes": 1, "threads": torch.get_num_threads(), "rows": rows,
                      "seconds": seconds, "rows_per_second": one}), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           __file__, "--worker", "--rows", str(args.rows), "--sae", args.sae, "--batch",
                           str(args.batch)], capture_output=True, text=True, env=env, check=True)
    res = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    two = res["rows"] / res["seconds"]
    print(json.dumps({"kind": "distributed", "processes": 2, "threads_each": 1, **res, "rows_per_second": two}))
    print(json.dumps({"kind": "summary", "ratio": two / one, "target": TARGET, "met": two / one >= TARGET}))


if __name__ == "__main__":
    main()
