"""SAEs of every family trained on a world through the same SAE-Lens trainer path as `saeamort train`.

Widths: equal to the number of true features (×1) and twice it (×2). Recipes are chosen per family so the SAEs are
sparse at about the world's own L0 (TopK families: k = round(mean_l0)). The small preset's SAEs ship with the
package in fp16 (`world/weights/<family>-x<width>/`); the others build with `saeamort world train`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from saelens_amort.atomic import write_text_atomic
from saelens_amort.errors import SaeAmortError
from saelens_amort.training.config import ARCHS, TrainConfig
from saelens_amort.world.store import HOOK_NAME, World

FAMILIES = tuple(a for a in ARCHS if a != "loca")
WIDTHS = (1, 2)
"""d_sae as a multiple of the world's number of true features."""
SHIPPED_DIR = Path(__file__).parent / "weights"


BATCH_SIZE = 256
EPOCHS = 2
"""Passes over the world's training rows (the small preset: 208 896 rows, 1 632 steps of 256)."""
LR = 4e-3
SPARSITY = {"standard": 1.1, "gated": 1.3, "jumprelu": 0.15}
"""L1 coefficient (standard, gated) or L0 coefficient (jumprelu) putting each family near the world's L0."""


def recipe(world: World, family: str, width: int, tokens: int) -> TrainConfig:
    """The training recipe of `family` at `width` × the world's features, over its first `tokens` rows.

    Tuned on the small preset (one CPU thread, 500-step runs of 256 rows; held-out NMSE / L0): lr 4e-3 beat 1e-3,
    1e-2 and 2e-2 (TopK 0.46 / 0.54 / 0.57 / 1.76); batches of 256 beat 1 024 and 128 at equal rows; a 3-pass TopK
    run reached 0.33, still improving by ≈ 0.01 per 200 steps, so the shipped budget (EPOCHS) is what CPU time
    allows, not convergence. L0 is very sensitive to the sparsity coefficient: standard L1 1.0 / 1.3 / 2.0 gave
    L0 23 / 12 / 0.9 (NMSE 0.52 / 0.69 / 0.97), gated 1.0 / 1.3 / 2.0 gave 28 / 21 / 2.9, jumprelu L0-coefficient
    0.1 / 0.2 / 0.5 gave 22 / 9 / 2.9. L0 keeps falling with longer training: over the full two passes standard
    1.2 and gated 1.5 ended at L0 8.9 and 5.1, jumprelu 0.15 at 12.5; SPARSITY's standard 1.1 and gated 1.3 ended
    at 11.1 and 7.2 (held-out NMSE 0.52 and 0.41; TopK 0.34, BatchTopK 0.42, Matryoshka 0.44, JumpReLU 0.40). The last 20 % of the steps
    decay the learning rate linearly to zero (+0.03 explained variance on TopK).
    """
    cfg = world.config
    d_sae = cfg.n_features * width
    if d_sae % cfg.d:
        raise SaeAmortError(f"world SAEs need n_features × width ({d_sae}) divisible by d ({cfg.d})")
    steps = max(1, EPOCHS * tokens // BATCH_SIZE)
    sparsity = SPARSITY.get(family, 0.0)
    return TrainConfig(arch=family, activations=str(world.path), tokens=tokens, steps=steps, batch_size=BATCH_SIZE,
                       expansion=d_sae // cfg.d, k=max(1, round(cfg.mean_l0)), l1_coefficient=sparsity,
                       l0_coefficient=sparsity, lr=LR, lr_decay_steps=steps // 5, seed=cfg.seed)


def train_world_saes(world: World, out: Path | str, *, families: tuple[str, ...] = FAMILIES,
                     widths: tuple[int, ...] = WIDTHS, tokens: int | None = None, overwrite: bool = False,
                     progress: bool = True) -> dict[str, dict]:
    """Train each family × width on `world` into `out/<family>-x<width>/`; returns each run's summary."""
    from saelens_amort.training.run import HELD_OUT_ROWS, run_train

    _check_suite_folder(Path(out))
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise SaeAmortError(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    if not widths or any(w < 1 for w in widths):
        raise SaeAmortError(f"widths must be positive multiples of the number of true features, got {widths}")
    if tokens is not None and tokens < 1:
        raise SaeAmortError(f"--tokens must be positive, got {tokens}")
    tokens = tokens or (world.store.n_tokens - HELD_OUT_ROWS) // BATCH_SIZE * BATCH_SIZE
    out = Path(out)
    summaries = {}
    for family in families:
        for width in widths:
            run = out / f"{family}-x{width}"
            summary_file = run / "summary.json"
            if summary_file.exists() and not overwrite:
                summaries[run.name] = json.loads(summary_file.read_text())
                continue
            # an unfinished run of the same recipe resumes from its checkpoint; another recipe's is refused
            unfinished = (run / "train_config.json").exists() and not overwrite
            summaries[run.name] = run_train(recipe(world, family, width, tokens), run, overwrite=overwrite,
                                            resume=unfinished, progress=progress)
    write_text_atomic(out / "suite.json", json.dumps(summaries, indent=2))
    return summaries


def _check_suite_folder(out: Path) -> None:
    """`out` may hold only this command's files (suite.json and <family>-x<width>/ runs): never mixed into
    another command's results."""
    import re

    if out.exists() and not out.is_dir():
        raise SaeAmortError(f"--out {out} is a file, not a folder; choose another --out")
    foreign = sorted(p.name for p in out.iterdir() if p.name != "suite.json"
                     and not (p.is_dir() and re.fullmatch(r"[a-z_]+-x\d+", p.name))) if out.exists() else []
    if foreign:
        raise SaeAmortError(f"{out} holds files not written by `saeamort world train` ({', '.join(foreign[:3])}); "
                            "use another --out")


def ship(runs: Path | str, dest: Path | str = SHIPPED_DIR) -> None:
    """Copy each run's final SAE into `dest/<run>/` with its weights in fp16 (cfg.json kept as it is)."""
    runs, dest = Path(runs), Path(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for run in sorted(p for p in runs.iterdir() if (p / "sae").is_dir()):
        (tmp / run.name).mkdir(parents=True)
        shutil.copy(run / "sae" / "cfg.json", tmp / run.name / "cfg.json")
        weights = load_file(str(run / "sae" / "sae_weights.safetensors"))
        save_file({k: v.to(torch.float16).contiguous() for k, v in weights.items()},
                  str(tmp / run.name / "sae_weights.safetensors"))
        shutil.copy(run / "summary.json", tmp / run.name / "summary.json")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def oracle_sae(world: World):
    """The true dictionary as a real SAE-Lens TopKSAE (W_dec = true atoms, W_enc = its transpose, k = the world's
    mean L0): its per-sample modes are the ceiling any SAE on this world can reach."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    atoms = world.structure.atoms
    n, d = atoms.shape
    sae = TopKSAE(TopKSAEConfig(d_in=d, d_sae=n, k=max(1, round(world.config.mean_l0)), dtype="float32",
                                device="cpu", metadata=SAEMetadata(hook_name=HOOK_NAME)))
    with torch.no_grad():
        sae.W_dec.copy_(atoms)
        sae.W_enc.copy_(atoms.T)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def default_world_suite(world: World) -> tuple[str, ...]:
    """The shipped SAEs when `world` is the shipped small preset, then the oracle."""
    from saelens_amort.world.config import PRESETS

    shipped = tuple(shipped_sae_dirs()) if world.config == PRESETS["small"] else ()
    return (*shipped, "oracle")


def shipped_sae_dirs() -> dict[str, Path]:
    """The shipped SAEs of the small preset: `world/<family>-x<width>` → its directory."""
    if not SHIPPED_DIR.is_dir():
        return {}
    return {f"world/{p.name}": p for p in sorted(SHIPPED_DIR.iterdir()) if (p / "cfg.json").exists()}


__all__ = ["FAMILIES", "WIDTHS", "default_world_suite", "oracle_sae", "recipe", "ship", "shipped_sae_dirs",
           "train_world_saes"]
