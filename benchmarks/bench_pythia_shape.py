"""`saeamort eval` at the paper's shape, offline: a random pythia-160m-shaped checkpoint, layer 8, a random
dictionary_learning TopK SAE at widths 4 096 and 16 384 (issue 14).

    python benchmarks/bench_pythia_shape.py                         # 4096 tokens @ 4096 wide, 2048 @ 16384
    python benchmarks/bench_pythia_shape.py --runs 1024:4096        # one quick run (tokens:width)

Builds, in a temporary folder, a GPT-NeoX checkpoint with pythia-160m-deduped's config and random weights (the toy
world's word-level tokenizer saved beside it), a text file of toy-corpus documents, and one SAE folder per width
(dictionary_learning's `ae.pt` + `config.json`, as tests/helpers.py writes them). `--sae-init fresh` (default) is
dictionary_learning's own initialisation (unit-norm random atoms, encoder = decoderᵀ, zero biases), like an untrained
SAE; `random` randomises every parameter (tests/helpers.py build_random_dictionary_learning_ae: encoder unrelated to
the decoder, large biases), which makes the lasso calibration far slower (> 25 min at 4 096 tokens on a loaded
machine). Each run is a
fresh `python -m saelens_amort eval` process; JSON lines per run: wall seconds, peak RSS of that process (os.wait4),
the stage timings from results.json, the calibration share of the run (target ≤ 10 %), semi vs unamortized seconds
(target: semi cheaper), and the load average before the run (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from saelens_amort.provenance import provenance

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from bench_eval import run_eval  # noqa: E402  (this script's folder is on sys.path when it runs)
from helpers import (  # noqa: E402
    build_random_dictionary_learning_ae,
    import_dictionary_learning,
    write_dictionary_learning_dir,
)

PYTHIA_160M = dict(
    architectures=["GPTNeoXForCausalLM"], bos_token_id=0, eos_token_id=0, hidden_act="gelu", hidden_size=768,
    initializer_range=0.02, intermediate_size=3072, layer_norm_eps=1e-05, max_position_embeddings=2048,
    model_type="gpt_neox", num_attention_heads=12, num_hidden_layers=12, rotary_emb_base=10000, rotary_pct=0.25,
    tie_word_embeddings=False, use_cache=True, use_parallel_residual=True, vocab_size=50304,
)
"""EleutherAI/pythia-160m-deduped's config.json (no download)."""
LAYER = 8
TARGET_CALIBRATION_SHARE = 0.10
TARGET_PEAK_RSS_MIB = 2.5 * 1024
"""Issue 14: peak RSS ≤ 2.5 GB for the 4 096-token run."""


def build_checkpoint(folder: Path) -> Path:
    """The random pythia-shaped HF checkpoint with the toy tokenizer (BOS = EOS = 0, as pythia's config says)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from saelens_amort.toy.corpus import generate_corpus
    from saelens_amort.toy.tokenizer import train_tokenizer

    torch.manual_seed(0)
    GPTNeoXForCausalLM(GPTNeoXConfig(**PYTHIA_160M)).eval().save_pretrained(folder)
    train_tokenizer([d.text for d in generate_corpus(200, seed=0)], folder)
    return folder


def write_source(path: Path, n_docs: int) -> Path:
    from saelens_amort.toy.corpus import generate_corpus

    path.write_text("\n".join(" ".join(d.text.split()) for d in generate_corpus(n_docs, seed=1)) + "\n")
    return path


def build_sae(folder: Path, width: int, k: int, init: str) -> Path:
    d = PYTHIA_160M["hidden_size"]
    if init == "random":
        ae = build_random_dictionary_learning_ae("AutoEncoderTopK", activation_dim=d, dict_size=width, k=k, seed=width)
    else:
        torch.manual_seed(width)
        ae = import_dictionary_learning()["AutoEncoderTopK"](d, width, k)
    return write_dictionary_learning_dir(folder, ae, "AutoEncoderTopK", layer=LAYER)


def load_average() -> float:
    return os.getloadavg()[0]


def summary(stages: dict[str, float], wall: float) -> dict:
    """Calibration share of the eval's own wall time, semi vs unamortized (solve + calibration seconds)."""
    calibrate = stages.get("calibrate λ", 0.0)
    semi, unamortized = stages.get("solve semi", 0.0), stages.get("solve unamortized", 0.0) + stages.get("solve z*", 0.0)
    return {"calibration_share": round(calibrate / wall, 3), "target_calibration_share": TARGET_CALIBRATION_SHARE,
            "semi_s": round(semi, 1), "unamortized_s": round(unamortized, 1),
            "semi_cheaper": semi < unamortized}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=["4096:4096", "2048:16384"], help="tokens:width per run.")
    parser.add_argument("--k", type=int, default=64, help="TopK of the SAEs.")
    parser.add_argument("--sae-init", choices=("fresh", "random"), default="fresh",
                        help="dictionary_learning's own init, or every parameter random (module docstring).")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="More `saeamort eval` options.")
    args = parser.parse_args(argv)
    runs = [tuple(int(v) for v in r.split(":")) for r in args.runs]
    print(json.dumps({"kind": "run", "bench": "pythia_shape", **provenance(), "args": vars(args)}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_checkpoint(tmp / "pythia-160m-random")
        source = write_source(tmp / "corpus.txt", 2000)
        for tokens, width in runs:
            sae = build_sae(tmp / f"sae-{width}", width, args.k, args.sae_init)
            out = tmp / f"out-{tokens}-{width}"
            load = load_average()
            run = run_eval(["--model", str(model), "--layer", str(LAYER), "--sae-path", str(sae), "--source",
                            str(source), "--tokens", str(tokens), *args.extra], tmp / f"cache-{tokens}-{width}", out)
            r = {"wall_s": round(run["seconds"], 1), "peak_rss_mib": round(run["peak_rss_mib"])}
            timings = run["meta"]["timings"]
            stages = {name: round(s, 1) for name, s in sorted(timings["stages"].items(), key=lambda kv: -kv[1])}
            line = {"kind": "eval", "tokens": tokens, "width": width, "k": args.k, "sae_init": args.sae_init,
                    "load_before": round(load, 2), **r,
                    "eval_wall_s": round(timings["wall_seconds"], 1), "stages": stages,
                    **summary(timings["stages"], timings["wall_seconds"]),
                    "calibration_by_mode": {row["mode"]: round(row["calibration_seconds"], 2)
                                            for row in run["meta"]["rows"] if row.get("calibration_seconds")}}
            if tokens == 4096 and width == 4096:
                line |= {"target_peak_rss_mib": TARGET_PEAK_RSS_MIB, "rss_met": r["peak_rss_mib"] <= TARGET_PEAK_RSS_MIB}
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
