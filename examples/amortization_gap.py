"""The price of amortization on one toy SAE, step by step with the Python API (no network):
encoder codes vs sparse coding on the same dictionary at matched L0, then whether the mode changes which latents an
intervention finds.

    python examples/amortization_gap.py [--family standard] [--tokens 4096]
"""

import argparse

import torch

from saelens_amort import CollectConfig, calibrate_lambda, collect_activations, infer, load_model, load_sae, \
    resolve_source
from saelens_amort.interventions import LatentEdit, patch_generate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", default="standard")
    parser.add_argument("--tokens", type=int, default=4096)
    args = parser.parse_args()

    model, sae = load_model("toy"), load_sae(f"toy/{args.family}")
    store = collect_activations(model, resolve_source("toy"), CollectConfig(
        hook_name=sae.cfg.metadata.hook_name, n_tokens=args.tokens), None, model_name="toy", progress=False)
    x = store.load().acts
    cal = calibrate_lambda(x[:1024], sae, "unamortized")  # λ whose unamortized L0 matches the encoder's
    print(f"λ = {cal.lam:.4g} (target L0 {cal.target_value:.1f}, reached {cal.achieved:.1f})")
    results = {mode: infer(x, sae, mode, lam=cal.lam) for mode in ("amortized", "semi", "unamortized")}
    for mode, res in results.items():
        recon = sae.decode(res.codes.to(sae.W_dec.dtype)).detach()
        nmse = float((recon - x).pow(2).sum() / x.pow(2).sum())
        gap = float((res.objective - results["unamortized"].objective).mean())
        print(f"{mode:12s} NMSE {nmse:.4f}  L0 {(res.codes > 0).sum(1).float().mean():5.1f}  gap {gap:8.3f}  "
              f"{res.seconds:.2f} s")

    # The latents each mode relies on most, and what ablating the top encoder latents does to a generation.
    for mode in ("amortized", "unamortized"):
        top = results[mode].codes.gt(0).float().mean(0).topk(5).indices.tolist()
        print(f"{mode:12s} most frequent latents: {top}")
    top = results["amortized"].codes.gt(0).float().mean(0).topk(5).indices.tolist()
    with torch.no_grad():
        side = patch_generate(model, sae, LatentEdit(ablate=tuple(top)), ["the match ended"], max_new_tokens=12)[0]
    print(f"original: {side.original}\npatched:  {side.patched}")


if __name__ == "__main__":
    main()
