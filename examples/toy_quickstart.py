"""Quick start on the embedded toy world (no network): load the model and an SAE, collect activations, and
measure the SAE's reconstruction and sparsity on them with SAE-Lens' own encode/decode.

    python examples/toy_quickstart.py [--tokens 5000] [--family topk]
"""

import argparse
import tempfile
from pathlib import Path

import torch

from saelens_amort import CollectConfig, check_sae_fits, collect_activations, load_model, load_sae, resolve_source
from saelens_amort.toy.corpus import LABEL_NAMES


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=5000)
    parser.add_argument("--family", default="topk")
    args = parser.parse_args()

    model = load_model("toy")
    sae = load_sae(f"toy/{args.family}")
    hook = check_sae_fits(sae, model)  # the SAE's own hook, checked against the model
    with tempfile.TemporaryDirectory() as tmp:
        store = collect_activations(
            model, resolve_source("toy", seed=123), CollectConfig(hook_name=hook, n_tokens=args.tokens),
            Path(tmp) / "acts", model_name="toy", progress=False,
        )
        sq_err = sq_norm = l0 = 0.0
        per_class = torch.zeros(len(LABEL_NAMES))
        with torch.no_grad():
            for batch in store.iter_batches(1024):
                codes = sae.encode(batch.acts)
                sq_err += ((sae.decode(codes) - batch.acts) ** 2).sum().item()
                sq_norm += (batch.acts**2).sum().item()
                l0 += (codes > 0).sum().item()
                per_class += torch.bincount(batch.labels, minlength=len(LABEL_NAMES))
    print(f"{args.family} SAE on {hook}: NMSE {sq_err / sq_norm:.4f}, L0 {l0 / store.n_tokens:.1f} "
          f"over {store.n_tokens} tokens")
    print("tokens per class:", dict(zip(LABEL_NAMES, per_class.int().tolist())))


if __name__ == "__main__":
    main()
