"""Inference on an accelerator: tokens/s per mode against the encoder, and results equal to the CPU's, as JSON lines.

    python benchmarks/bench_device.py --device cuda                    # d_in 768, d_sae 16384, 8192 rows
    python benchmarks/bench_device.py --device cpu --rows 512 --d-sae 2048 --compare-rows 64    # a smoke test

A `make_problem` dictionary (d_in unit atoms, k-sparse non-negative codes plus noise, drawn in fp64 on the CPU from
a seed, so both devices see the same numbers) wrapped in a real SAE-Lens TopK SAE (`sae_for_problem`), as in
bench_inference.py. λ is calibrated once per λ-mode on the device (that mode's mean L0 matches the encoder's). Then:

- `mode` lines: each mode on `--rows` rows on the device, best of `--repeats` warm runs (synchronised), with
  tokens/s and encoder-equivalents (its seconds ÷ `sae.encode`'s on the same rows and device);
- `equal` lines: each mode on the first `--compare-rows` rows on the device and on the CPU at the same λ (and the
  same k: the encoder's per-row L0 computed on the CPU for the k-sparse modes), compared: largest relative objective
  difference (½‖x' − uA‖² for the k-sparse modes), the fraction of rows whose support is identical, and whether the
  mean objectives agree within `--rtol` (fp32: different summation orders, so iterative solvers can drift apart by
  rounding; the support fraction says how far).

Never run by the tests (they must not need a GPU); the CPU smoke test above exercises every line of it.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from saelens_amort.inference import calibrate_lambda, get_mode, infer, resolve_dictionary
from saelens_amort.provenance import provenance
from saelens_amort.synthetic import make_problem, sae_for_problem

MODES = ("amortized", "semi", "unamortized", "semi_ksparse", "ksparse", "omp")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best, out


def _half_sq(x: torch.Tensor, codes: torch.Tensor, sae) -> torch.Tensor:
    d = resolve_dictionary(sae)
    u = d.from_sae_codes(codes.to(d.atoms.dtype))
    return 0.5 * (d.target(x) - u @ d.atoms).double().square().sum(dim=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--d-sae", type=int, default=16384)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--compare-rows", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--rtol", type=float, default=1e-4)
    args = ap.parse_args()
    dev = torch.device(args.device)
    modes = [m for m in args.modes.split(",") if m]
    print(json.dumps({"kind": "run", "args": vars(args), "device_name": torch.cuda.get_device_name(dev)
                      if dev.type == "cuda" else "cpu", **provenance()}, default=str), flush=True)

    p = make_problem(args.rows, args.d_in, args.d_sae, args.k, noise=0.05)
    sae_cpu = sae_for_problem(p)
    sae_dev = sae_for_problem(p).to(dev)
    x_cpu, x_dev = p.x, p.x.to(dev)
    calib = x_dev[: min(2048, args.rows)]
    lams = {m: calibrate_lambda(calib, sae_dev, m).lam for m in modes if get_mode(m).needs_lambda}
    print(json.dumps({"kind": "lambda", "lam": lams}), flush=True)

    def run(mode: str, x: torch.Tensor, sae, **kw):
        return infer(x, sae, mode, lam=lams.get(mode), **kw)

    k_mean = max(1, round(float((sae_cpu.encode(x_cpu[:256]) > 0).sum(dim=1).float().mean())))
    extra = {"omp": {"k": k_mean}}
    with torch.no_grad():
        enc_s, _ = _timed(lambda: sae_dev.encode(x_dev), dev, args.repeats + 1)
        for mode in modes:
            kw = extra.get(mode, {})
            run(mode, x_dev[:256], sae_dev, **kw)  # warm-up (kernels, cached Gram)
            secs, res = _timed(lambda m=mode, k=kw: run(m, x_dev, sae_dev, **k), dev, args.repeats)
            print(json.dumps({"kind": "mode", "mode": mode, "device": str(dev), "rows": args.rows, "seconds": secs,
                              "tokens_per_s": args.rows / secs, "enc_eq": secs / enc_s,
                              "l0": float((res.codes > 0).sum(dim=1).float().mean())}), flush=True)

        n = min(args.compare_rows, args.rows)
        xc, xd = x_cpu[:n], x_dev[:n]
        k_rows = (sae_cpu.encode(xc) > 0).sum(dim=1)
        for mode in modes:
            kw = dict(extra.get(mode, {}))
            if mode in ("semi_ksparse", "ksparse"):
                kw["k"] = k_rows
            on_cpu = run(mode, xc, sae_cpu, **{k: v for k, v in kw.items()})
            on_dev = run(mode, xd, sae_dev, **{k: (v.to(dev) if isinstance(v, torch.Tensor) else v)
                                              for k, v in kw.items()})
            a = _half_sq(xc, on_cpu.codes, sae_cpu)
            b = _half_sq(xc, on_dev.codes.cpu(), sae_cpu)
            if get_mode(mode).needs_lambda:
                a = on_cpu.objective.double()
                b = on_dev.objective.double().cpu()
            rel = ((a - b).abs() / a.abs().clamp_min(1e-12)).max().item()
            same = ((on_cpu.codes > 0) == (on_dev.codes.cpu() > 0)).all(dim=1).float().mean().item()
            mean_rel = abs(a.mean().item() - b.mean().item()) / max(abs(a.mean().item()), 1e-12)
            print(json.dumps({"kind": "equal", "mode": mode, "rows": n, "objective_rel_diff_max": rel,
                              "mean_objective_rel_diff": mean_rel, "same_support_frac": same,
                              "equal_within_rtol": mean_rel <= args.rtol}), flush=True)


if __name__ == "__main__":
    main()
