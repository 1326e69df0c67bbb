"""`saeamort eval` end to end on the toy world, as JSON lines: peak memory at N and 10·N tokens, and wall time.

    python benchmarks/bench_eval.py                    # N = 4096 on toy/topk; then the full default toy eval
    python benchmarks/bench_eval.py --n 1024 --no-full  # quick

Each run is a fresh `python -m saelens_amort eval` process with its own empty activation cache (collection included),
measured with `os.wait4` (peak RSS of that process only). Lines: `rss` per token count, `memory` with the ratio
(target ≤ 1.2: activations stream, so memory must not grow with --tokens), and `e2e` for the README's main job
(`saeamort eval --model toy`: six SAEs × three modes; target ≤ 120 s on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from saelens_amort.provenance import provenance

TARGET_RSS_RATIO = 1.2
TARGET_E2E_SECONDS = 120.0


def run_eval(args: list[str], cache: Path) -> dict:
    env = {**os.environ, "SAEAMORT_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "saelens_amort", "eval", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    stderr = proc.stderr.read() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"eval failed ({code}): {stderr[-2000:]}")
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096, help="Smaller token count N (the other is 10·N).")
    parser.add_argument("--sae", default="toy/topk", help="SAE for the memory runs.")
    parser.add_argument("--no-full", action="store_true", help="Skip the full default toy eval.")
    args = parser.parse_args(argv)
    print(json.dumps({"kind": "run", "bench": "eval", **provenance(), "args": vars(args)}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rss = {}
        for n in (args.n, 10 * args.n):
            r = run_eval(["--model", "toy", "--sae", args.sae, "--tokens", str(n), "--calib-tokens",
                          str(min(2048, n)), "--out", str(tmp / f"out-{n}")], tmp / f"cache-{n}")
            rss[n] = r["peak_rss_mib"]
            print(json.dumps({"kind": "rss", "tokens": n, "sae": args.sae, **r}), flush=True)
        ratio = rss[10 * args.n] / rss[args.n]
        print(json.dumps({"kind": "memory", "tokens": [args.n, 10 * args.n], "ratio": ratio,
                          "target": TARGET_RSS_RATIO, "met": ratio <= TARGET_RSS_RATIO}), flush=True)
        if not args.no_full:
            r = run_eval(["--model", "toy", "--out", str(tmp / "full")], tmp / "cache-full")
            print(json.dumps({"kind": "e2e", "command": "saeamort eval --model toy", **r,
                              "target_seconds": TARGET_E2E_SECONDS, "met": r["seconds"] <= TARGET_E2E_SECONDS}),
                  flush=True)


if __name__ == "__main__":
    main()
