"""`saeamort toy build`: regenerate the whole embedded toy world from its seed.

corpus → tokenizer → language model → activations at the middle block → one SAE per family → build_info.json.
Everything is written to a temporary sibling directory and moved into place at the end, so a failed or
interrupted build never leaves a half-written world behind.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from saelens_amort.errors import SaeAmortError
from saelens_amort.provenance import provenance
from saelens_amort.toy.corpus import generate_corpus
from saelens_amort.toy.model import TOKENIZER_DIR, ToyModelConfig, save_toy_model, train_toy_model
from saelens_amort.toy.paths import WEIGHTS_DIR
from saelens_amort.toy.saes import ToySAEConfig, train_toy_sae
from saelens_amort.toy.tokenizer import train_tokenizer

logger = logging.getLogger(__name__)

FAMILIES = ("standard", "topk", "batchtopk", "matryoshka_batchtopk", "jumprelu", "gated")
BUILD_INFO_FILE = "build_info.json"


@dataclass(frozen=True)
class ToyBuildConfig:
    model: ToyModelConfig = field(default_factory=ToyModelConfig)
    """The language model's size and training schedule."""
    sae: ToySAEConfig = field(default_factory=ToySAEConfig)
    """The SAEs' size and training schedule (shared by all families)."""
    sae_tokens: int = 300_000
    """Activation rows collected for SAE training (plus 10 % held out for the build report)."""
    families: tuple[str, ...] = FAMILIES
    """SAE families to train."""
    tokenizer_docs: int = 2000
    """Documents the tokenizer is trained on (every generator word is added regardless)."""
    seed: int = 0
    """Master seed; the corpus stream for SAE activations uses seed + 1."""

    @property
    def layer(self) -> int:
        return self.model.n_layers // 2

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.hook_resid_post"

    def __post_init__(self) -> None:
        unknown = set(self.families) - set(FAMILIES)
        if unknown:
            raise SaeAmortError(f"unknown SAE families {sorted(unknown)}; choose from {list(FAMILIES)}")
        if self.sae_tokens < self.sae.batch_size:
            raise SaeAmortError(f"sae_tokens ({self.sae_tokens}) must be at least one SAE batch ({self.sae.batch_size})")


@torch.no_grad()
def _sae_report(sae_dir: Path, acts: torch.Tensor) -> dict[str, float]:
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(sae_dir))
    codes = sae.encode(acts)
    recon = sae.decode(codes)
    return {
        "architecture": sae.cfg.architecture(),
        "nmse": float(((recon - acts) ** 2).sum(-1).mean() / (acts**2).sum(-1).mean()),
        "l0": float((codes > 0).float().sum(-1).mean()),
        "dead_frac": float(((codes > 0).float().mean(0) == 0).float().mean()),
    }


def build_toy_world(cfg: ToyBuildConfig, out_dir: Path = WEIGHTS_DIR) -> dict:
    """Build everything into `out_dir` (replaced atomically at the end) and return the build info."""
    from saelens_amort.activations import CollectConfig, collect_activations, resolve_source

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-build-", dir=out_dir.parent))
    t0 = time.perf_counter()
    try:
        logger.info("training the tokenizer")
        texts = [d.text for d in generate_corpus(cfg.tokenizer_docs, seed=cfg.seed)]
        tokenizer = train_tokenizer(texts, staging / TOKENIZER_DIR)

        logger.info("training the language model (%d steps)", cfg.model.steps)
        model, lm_stats = train_toy_model(tokenizer, cfg.model)
        save_toy_model(model, cfg.model, staging)

        logger.info("collecting %d activations at %s", cfg.sae_tokens, cfg.hook_name)
        n_heldout = max(cfg.sae.batch_size, cfg.sae_tokens // 10)
        with tempfile.TemporaryDirectory() as act_dir:
            store = collect_activations(
                model,
                resolve_source("toy", seed=cfg.seed + 1),
                CollectConfig(hook_name=cfg.hook_name, n_tokens=cfg.sae_tokens + n_heldout, context_size=cfg.model.n_ctx),
                Path(act_dir),
                model_name="toy",
                progress=False,
            )
            acts = store.load().acts.float()
        train_acts, heldout_acts = acts[:-n_heldout], acts[-n_heldout:]

        saes = {}
        for family in cfg.families:
            logger.info("training the %s SAE", family)
            stats = train_toy_sae(family, train_acts, cfg.hook_name, cfg.sae, staging / "saes" / family)
            saes[family] = {**stats, **_sae_report(staging / "saes" / family, heldout_acts)}

        info = {
            "config": asdict(cfg),
            "hook_name": cfg.hook_name,
            "d_vocab": len(tokenizer),
            "lm": lm_stats,
            "saes": saes,
            "build_seconds": time.perf_counter() - t0,
            "provenance": provenance(),
        }
        (staging / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2))
        _replace_dir(staging, out_dir)
        return info
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_build_out(out: Path, *, overwrite: bool = False) -> None:
    """A build replaces `out` only when it is absent, empty, or an earlier toy build (it holds build_info.json), or
    with `overwrite`; a file there, or under a file, is refused."""
    out = Path(out)
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise SaeAmortError(f"--out {out}: {parent} is a file, not a folder")
    if not out.exists():
        return
    if not out.is_dir():
        raise SaeAmortError(f"--out {out} is a file, not a folder; choose another --out")
    if (out / BUILD_INFO_FILE).exists() or not any(out.iterdir()) or overwrite:
        return
    raise SaeAmortError(f"{out} holds files that are not a toy world build; use another --out or pass --overwrite "
                        "to replace them")


def _replace_dir(src: Path, dst: Path) -> None:
    """Move `src` to `dst`, replacing it; the old world is only removed once the new one is in place."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}-old")
        shutil.rmtree(old, ignore_errors=True)
        dst.rename(old)
        src.rename(dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        src.rename(dst)


def load_build_info(weights_dir: Path = WEIGHTS_DIR) -> dict:
    path = Path(weights_dir) / BUILD_INFO_FILE
    if not path.is_file():
        raise SaeAmortError(f"no toy build in {weights_dir}; run `saeamort toy build`")
    return json.loads(path.read_text())


def scale_config(scale: str, seed: int = 0) -> ToyBuildConfig:
    """`full`: the shipped world. `tiny`: the same pipeline in seconds (tests, smoke runs)."""
    if scale == "full":
        return ToyBuildConfig(model=ToyModelConfig(seed=seed), sae=ToySAEConfig(seed=seed), seed=seed)
    if scale == "tiny":
        return ToyBuildConfig(
            model=ToyModelConfig(n_layers=2, d_model=32, n_heads=2, d_mlp=64, n_ctx=32, steps=30, batch_size=8, seed=seed),
            sae=ToySAEConfig(expansion=8, k=4, steps=30, batch_size=128, seed=seed),
            sae_tokens=4000,
            tokenizer_docs=200,
            seed=seed,
        )
    raise SaeAmortError(f"unknown scale {scale!r}; use full or tiny")
