"""The toy language model: a small GPT-NeoX-architecture HookedTransformer (Pythia's family) trained on the toy corpus.

Rotary embeddings on a quarter of each head (Pythia's rotary_pct), attention and MLP in parallel, LayerNorm, GELU.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerBase

from saelens_amort.errors import SaeAmortError
from saelens_amort.toy.corpus import iter_corpus
from saelens_amort.toy.paths import WEIGHTS_DIR
from saelens_amort.toy.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "model_config.json"
TOKENIZER_DIR = "tokenizer"


@dataclass(frozen=True)
class ToyModelConfig:
    n_layers: int = 4
    """Transformer blocks; the toy SAEs read the middle one."""
    d_model: int = 128
    """Residual stream width (the SAEs' d_in)."""
    n_heads: int = 4
    """Attention heads per block (d_head = d_model / n_heads)."""
    d_mlp: int = 512
    """MLP hidden width."""
    n_ctx: int = 128
    """Context length used in training and as the model's maximum."""
    steps: int = 1200
    """Optimiser steps."""
    batch_size: int = 16
    """Sequences per step."""
    lr: float = 2e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay)."""
    seed: int = 0
    """Seed for the corpus stream, initialisation and batching."""

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise SaeAmortError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if min(self.n_layers, self.d_model, self.d_mlp, self.n_ctx, self.steps, self.batch_size) <= 0:
            raise SaeAmortError("toy model sizes and steps must be positive")


def hooked_config(cfg: ToyModelConfig, d_vocab: int) -> HookedTransformerConfig:
    d_head = cfg.d_model // cfg.n_heads
    return HookedTransformerConfig(
        model_name="toy",
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        d_head=d_head,
        d_mlp=cfg.d_mlp,
        n_ctx=cfg.n_ctx,
        d_vocab=d_vocab,
        act_fn="gelu",
        normalization_type="LN",
        positional_embedding_type="rotary",
        rotary_dim=max(2, d_head // 4),
        rotary_adjacent_pairs=False,
        parallel_attn_mlp=True,
        original_architecture="GPTNeoXForCausalLM",
        tokenizer_prepends_bos=False,
        default_prepend_bos=True,
        seed=cfg.seed,
    )


def packed_batches(
    tokenizer: PreTrainedTokenizerBase, cfg: ToyModelConfig, seed: int
) -> Iterator[torch.Tensor]:
    """Endless [batch, n_ctx] token batches: documents joined by the end-of-text token, each row starting with it."""
    eot = tokenizer.bos_token_id
    buffer: list[int] = []
    docs = iter_corpus(None, seed=seed)
    while True:
        rows = []
        while len(rows) < cfg.batch_size:
            while len(buffer) < cfg.n_ctx - 1:
                buffer += tokenizer(next(docs).text, add_special_tokens=False)["input_ids"] + [eot]
            rows.append([eot] + buffer[: cfg.n_ctx - 1])
            buffer = buffer[cfg.n_ctx - 1 :]
        yield torch.tensor(rows, dtype=torch.long)


def unigram_entropy(tokenizer: PreTrainedTokenizerBase, n_docs: int, seed: int) -> float:
    """Entropy (nats/token) of the token distribution of a held-out slice: the loss of the best unigram model."""
    counts: Counter[int] = Counter()
    for doc in iter_corpus(n_docs, seed=seed):
        counts.update(tokenizer(doc.text, add_special_tokens=False)["input_ids"])
        counts[tokenizer.bos_token_id] += 1
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values())


@torch.no_grad()
def heldout_loss(model: HookedTransformer, batches: Iterator[torch.Tensor], n_batches: int) -> float:
    losses = [model(next(batches), return_type="loss").item() for _ in range(n_batches)]
    return sum(losses) / len(losses)


def train_toy_model(
    tokenizer: PreTrainedTokenizerBase, cfg: ToyModelConfig, *, log_every: int = 100
) -> tuple[HookedTransformer, dict[str, float]]:
    """Train from scratch; returns the model and its held-out loss next to the unigram entropy (nats/token)."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model = HookedTransformer(hooked_config(cfg, len(tokenizer)), tokenizer=tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)),
    )
    batches = packed_batches(tokenizer, cfg, seed=cfg.seed)
    start = time.perf_counter()
    model.train()
    for step in range(cfg.steps):
        loss = model(next(batches), return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == cfg.steps - 1):
            logger.info("lm step %5d  loss %.3f", step, loss.item())
    model.eval()
    heldout_seed = cfg.seed + 1_000_003  # a disjoint stream of documents
    stats = {
        "heldout_loss_nats": heldout_loss(model, packed_batches(tokenizer, cfg, seed=heldout_seed), 8),
        "unigram_entropy_nats": unigram_entropy(tokenizer, 2000, seed=heldout_seed),
        "train_seconds": time.perf_counter() - start,
        "train_tokens": cfg.steps * cfg.batch_size * cfg.n_ctx,
    }
    return model, stats


def save_toy_model(model: HookedTransformer, cfg: ToyModelConfig, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.endswith((".IGNORE", ".mask"))}
    save_file(state, str(out_dir / MODEL_FILE))
    meta = {"toy": asdict(cfg), "d_vocab": model.cfg.d_vocab}
    (out_dir / MODEL_CONFIG_FILE).write_text(json.dumps(meta, indent=2))


def load_toy_model(
    weights_dir: Path | None = None, *, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> HookedTransformer:
    """The shipped toy model (or one from a build directory) as a HookedTransformer."""
    weights_dir = WEIGHTS_DIR if weights_dir is None else Path(weights_dir)
    if not (weights_dir / MODEL_FILE).is_file():
        raise SaeAmortError(f"no toy model in {weights_dir}; run `saeamort toy build` to regenerate it")
    meta = json.loads((weights_dir / MODEL_CONFIG_FILE).read_text())
    cfg = ToyModelConfig(**meta["toy"])
    tokenizer = load_tokenizer(weights_dir / TOKENIZER_DIR)
    model = HookedTransformer(hooked_config(cfg, meta["d_vocab"]), tokenizer=tokenizer, move_to_device=False)
    model.load_state_dict(load_file(str(weights_dir / MODEL_FILE)), strict=False)
    if torch.device(device) != torch.device("cpu"):
        model.to(device)
    if dtype != torch.float32:
        model.to(dtype)
    model.eval()
    return model
