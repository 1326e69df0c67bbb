"""`saeamort eval` end to end, stage by stage, from an empty and from a warm activation cache, as JSON lines.

    python benchmarks/bench_eval.py                          # the README's main job: saeamort eval --model toy
    python benchmarks/bench_eval.py --quick                  # one SAE, 2048 tokens: a smoke test (about a minute)
    python benchmarks/bench_eval.py --memory --no-main       # peak RSS at N and 10·N tokens only

Each run is a fresh `python -m saelens_amort eval` process, measured from outside with `os.wait4` (wall time, peak RSS
of that process). The stage split comes from the run's own results.json ("timings", runners/eval_stages.py):
`imports` is the time from process start to the run's start (Python, torch, SAE-Lens, TransformerLens imports),
then load model, collect, load SAEs, calibrate λ, solve <mode> (per mode, z* apart), metric <family>, splice, report.

This virtual machine's speed drifts by up to 2× within minutes, so each eval run is bracketed by a fixed probe of
the kernels the solvers lean on (`speed`, one thread, GFLOP/s: fp32 GEMM [1024, 128] × [128, 1024], fp64 Cholesky
of 1 024 matrices 48 × 48, elementwise operations on [1024, 48] fp64 tensors), taken just before and just after
it: compare runs at similar probe figures.

Lines: `run` (provenance), per cache state (`cold`: empty SAEAMORT_CACHE; `warm`: the same cache again) one `stage`
line per stage with its share of the wall time, one `sae` line per SAE, and an `e2e` line with the targets of
issue 14 (cold ≤ 90 s, warm ≤ 45 s, peak RSS ≤ 1 GiB, the reference z* certified on ≥ 99.9 % of rows);
with --memory, `rss` at N and 10·N tokens and `memory` with their ratio (target ≤ 1.2: activations stream).
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

TARGET_COLD_SECONDS = 90.0
TARGET_WARM_SECONDS = 45.0
TARGET_RSS_MIB = 1024.0
TARGET_REF_CONVERGED = 0.999
TARGET_RSS_RATIO = 1.2


def run_eval(args: list[str], cache: Path, out: Path) -> dict:
    """One eval process: wall seconds, peak RSS, and its results.json."""
    env = {**os.environ, "SAEAMORT_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    before = machine_speed()
    launched = time.time()
    t0 = time.perf_counter()
    # run from the output's parent: `python -m` puts its working directory first on sys.path, so a run started from
    # another checkout would import that checkout's package instead of the one this script imported
    proc = subprocess.Popen([sys.executable, "-m", "saelens_amort", "eval", *args, "--out", str(out)], env=env,
                            cwd=out.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    stderr = proc.stderr.read() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"eval failed ({code}): {stderr[-2000:]}")
    meta = json.loads((out / "results.json").read_text())
    speed = {"before": before, "after": machine_speed()}
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024, "launched": launched, "meta": meta,
            "speed": speed}


SPEED_PROBE = """
import json, time, torch
torch.set_num_threads(1)
a, b = torch.randn(1024, 128), torch.randn(128, 1024)
B = torch.randn(1024, 48, 96, dtype=torch.float64)
G = B @ B.mT
v, w = torch.randn(1024, 48, dtype=torch.float64), torch.randn(1024, 48, dtype=torch.float64)


def small_ops():
    for _ in range(100):
        torch.where(v > 0, v * w + v, w).sum(dim=1)


out = {}
for name, fn, flops in (("gemm_gflops", lambda: a @ b, 2 * 1024 * 128 * 1024),
                        ("cholesky_gflops", lambda: torch.linalg.cholesky(G), 1024 * 48**3 / 3),
                        ("small_ops_gflops", small_ops, 100 * 1024 * 48 * 5)):
    fn()
    times = []
    for _ in range(5):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    out[name] = round(flops / min(times) / 1e9, 2)
print(json.dumps(out))
"""


def machine_speed() -> dict:
    """The speed probe (module docstring) in a fresh one-thread process."""
    out = subprocess.run([sys.executable, "-c", SPEED_PROBE], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def stage_lines(label: str, run: dict) -> list[dict]:
    timings = run["meta"]["timings"]
    stages = {"imports": timings["started"] - run["launched"], **timings["stages"]}
    lines = [{"kind": "stage", "cache": label, "stage": name, "seconds": round(sec, 3),
              "share": round(sec / run["seconds"], 4)} for name, sec in sorted(stages.items(), key=lambda kv: -kv[1])]
    lines += [{"kind": "sae", "cache": label, "sae": sae, "seconds": round(split.get("total", 0.0), 3),
               "stages": {k: round(v, 3) for k, v in sorted(split.items(), key=lambda kv: -kv[1]) if k != "total"}}
              for sae, split in timings["per_sae"].items()]
    return lines


def e2e_line(label: str, run: dict, command: str) -> dict:
    rows = run["meta"]["rows"]
    ref = [r["ref_converged_frac"] for r in rows if r.get("ref_converged_frac") is not None]
    target = TARGET_COLD_SECONDS if label == "cold" else TARGET_WARM_SECONDS
    ref_min = min(ref) if ref else None
    return {"kind": "e2e", "cache": label, "command": command, "seconds": round(run["seconds"], 2),
            "peak_rss_mib": round(run["peak_rss_mib"], 1), "ref_converged_min": ref_min, "speed": run["speed"],
            "targets": {"seconds": target, "peak_rss_mib": TARGET_RSS_MIB, "ref_converged": TARGET_REF_CONVERGED},
            "met": {"seconds": run["seconds"] <= target, "peak_rss_mib": run["peak_rss_mib"] <= TARGET_RSS_MIB,
                    "ref_converged": ref_min is not None and ref_min >= TARGET_REF_CONVERGED}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="One SAE (toy/topk), 2048 tokens.")
    parser.add_argument("--no-main", action="store_true", help="Skip the main-job runs.")
    parser.add_argument("--memory", action="store_true", help="Also peak RSS at N and 10·N tokens.")
    parser.add_argument("--n", type=int, default=4096, help="Smaller token count N of --memory.")
    parser.add_argument("--sae", default="toy/topk", help="SAE of --quick and --memory.")
    parser.add_argument("--workers", type=int, default=1, help="eval --workers of the main-job runs (local CPU "
                                                               "processes; peak RSS is then the largest process's).")
    args = parser.parse_args(argv)
    print(json.dumps({"kind": "run", "bench": "eval", **provenance(), "args": vars(args),
                      "load_avg": os.getloadavg(), "cpus": os.cpu_count()}), flush=True)
    main_args = ["--model", "toy"] + (["--sae", args.sae, "--tokens", "2048"] if args.quick else [])
    main_args += ["--workers", str(args.workers)] if args.workers > 1 else []
    command = "saeamort eval " + " ".join(main_args)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.no_main:
            for label in ("cold", "warm"):  # the same cache: empty, then filled by the cold run
                run = run_eval(main_args, tmp / "cache-main", tmp / f"out-{label}")
                for line in [*stage_lines(label, run), e2e_line(label, run, command)]:
                    print(json.dumps(line), flush=True)
        if args.memory:
            rss = {}
            for n in (args.n, 10 * args.n):
                r = run_eval(["--model", "toy", "--sae", args.sae, "--modes", "amortized,semi,unamortized",
                              "--tokens", str(n), "--calib-tokens", str(min(2048, n))],
                             tmp / f"cache-{n}", tmp / f"out-{n}")
                rss[n] = r["peak_rss_mib"]
                print(json.dumps({"kind": "rss", "tokens": n, "sae": args.sae, "seconds": r["seconds"],
                                  "peak_rss_mib": r["peak_rss_mib"]}), flush=True)
            ratio = rss[10 * args.n] / rss[args.n]
            print(json.dumps({"kind": "memory", "tokens": [args.n, 10 * args.n], "ratio": ratio,
                              "target": TARGET_RSS_RATIO, "met": ratio <= TARGET_RSS_RATIO}), flush=True)


if __name__ == "__main__":
    main()
