"""Where `saeamort eval` reads from: a model's cached activations at a hook (and whole sequences for spliced CE /
KL), or a given activation store — a ground-truth world adds its truth and the oracle SAE."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from saelens_amort.errors import SaeAmortError
from saelens_amort.runners.eval_stages import Stages


class SpliceTokens(NamedTuple):
    """Right-padded sequences and their real lengths (BOS included): padding is known by length, not by token id."""

    tokens: torch.Tensor
    lengths: torch.Tensor
    store_rows: int
    """The sequences' non-BOS positions, in row-major order, are the store's first `store_rows` rows."""


def splice_tokens(store, n_sequences: int, bos: int | None, pad: int) -> SpliceTokens | None:
    """Rebuild the first whole sequences from the store's rows (a sequence restarts where position returns to its
    first value), with BOS put back in front; right-padded with `pad`, with each row's real length."""
    if n_sequences <= 0:
        return None
    batch = store.load(min(store.n_tokens, 64 * store.meta.get("request", {}).get("context_size", 128)))
    starts = torch.nonzero(torch.diff(batch.positions, prepend=batch.positions[:1] + 1) <= 0).flatten().tolist()
    bounds = list(zip(starts, starts[1:] + [batch.positions.numel()]))[:n_sequences]
    seqs = [([bos] if bos is not None else []) + batch.token_ids[a:b].tolist() for a, b in bounds]
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s)
    return SpliceTokens(out, torch.tensor([len(s) for s in seqs]), bounds[-1][1])


class Inputs(NamedTuple):
    """What every SAE of a run is evaluated on: the model (None for --activations), the hook, the streamed
    activations, the splice sequences, the SAE dtype, and the World when the activations have ground truth."""

    model: Any
    hook: str
    store: Any
    splice_toks: SpliceTokens | None
    sae_dtype: torch.dtype | None
    world: Any


def load_inputs(cfg, specs: tuple[str, ...], out: Path, *, progress: bool = True,
                check_sae: Callable[[Any], None] | None = None, stages: Stages | None = None) -> Inputs:
    """Load the model (or open `cfg.activations`) and every SAE, checking each fits (and `check_sae(sae)` when
    given) before any work; create `out`; stream the activations once (cached)."""
    from saelens_amort.devices import check_device, resolve_dtype

    check_device(cfg.device)
    if str(cfg.device).startswith(("cpu", "auto")):
        from saelens_amort.inference.active_set import start_warm_up

        start_warm_up()  # the compiled CPU solvers, while the model loads and the activations stream
    sae_dtype = resolve_dtype(cfg.sae_dtype, cfg.device, "--sae-dtype")
    if cfg.activations is not None:
        store, world = open_activations(cfg, specs, sae_dtype, check_sae)
        make_out(out)
        return Inputs(None, store.hook_name, store, None, sae_dtype, world)
    model, store, hook, splice_toks = model_activations(cfg, specs, sae_dtype, out, progress, check_sae, stages)
    return Inputs(model, hook, store, splice_toks, sae_dtype, None)


def model_activations(cfg, specs: tuple[str, ...], sae_dtype, out: Path, progress: bool,
                      check_sae: Callable[[Any], None] | None = None, stages: Stages | None = None):
    """The model, its cached activations at the hook, the hook, and the sequences for spliced CE / KL."""
    from saelens_amort import distributed as dist
    from saelens_amort.activations import CollectConfig, collect_activations, resolve_source
    from saelens_amort.devices import resolve_dtype
    from saelens_amort.models import load_model
    from saelens_amort.runners.collect import resolve_hook
    from saelens_amort.saes import check_sae_fits, load_sae

    stages = stages or Stages()
    llm_dtype = resolve_dtype(cfg.llm_dtype, cfg.device, "--llm-dtype")
    try:  # the model and the text source are what an offline machine lacks: say how to run the study anyway
        with stages.stage("load model"):
            model = load_model(cfg.model, device=cfg.device, dtype=llm_dtype)
            source = resolve_source(cfg.resolved_source(), seed=cfg.seed)
    except SaeAmortError as e:
        if cfg.model == "toy":
            raise
        raise SaeAmortError(f"{str(e).rstrip('.')}; the same study offline: saeamort eval --model toy") from None
    hook = resolve_hook(model.cfg.n_layers, cfg.layer, cfg.hook)
    with stages.stage("load SAEs"):
        for spec in specs:
            sae = load_sae(spec, device=cfg.device, dtype=sae_dtype)
            check_sae_fits(sae, model, hook)
            if check_sae is not None:
                check_sae(sae)
    make_out(out)
    request = CollectConfig(hook_name=hook, n_tokens=cfg.tokens, context_size=cfg.context_size, seed=cfg.seed)
    if not dist.is_main():
        dist.barrier()  # rank 0 fills the activation cache; the others then read it
    with stages.stage("collect"):
        store = collect_activations(model, source, request, None, model_name=cfg.model,
                                    progress=progress and dist.is_main())
    if dist.is_main():
        dist.barrier()
    tok = model.tokenizer
    bos = tok.bos_token_id if tok is not None else None
    pad = (tok.pad_token_id if tok is not None and tok.pad_token_id is not None else 0)
    return model, store, hook, splice_tokens(store, cfg.splice_sequences, bos, pad)


ORACLE = "oracle"
"""On a world: the true dictionary as an SAE (every per-sample mode on it is the ceiling any SAE can reach)."""


def open_activations(cfg, specs: tuple[str, ...], sae_dtype, check_sae: Callable[[Any], None] | None = None):
    """The given store (and its World when it has ground truth); every SAE must read its width."""
    from saelens_amort.activations import ActivationStore
    from saelens_amort.world import World
    from saelens_amort.world.store import WORLD_FILE

    path = Path(cfg.activations)
    store = ActivationStore.open(path)
    world = World.open(path) if (path / WORLD_FILE).exists() else None
    if ORACLE in specs and world is None:
        raise SaeAmortError(f"--sae {ORACLE} needs a world (a store with ground truth); {path} has none")
    for spec in specs:
        sae = load_eval_sae(spec, world, cfg.device, sae_dtype)
        if int(sae.cfg.d_in) != store.d_in:
            raise SaeAmortError(f"SAE {spec} reads d_in={sae.cfg.d_in}, the activations in {path} have "
                                f"d={store.d_in}")
        if check_sae is not None:
            check_sae(sae)
    return store, world


def load_eval_sae(spec: str, world, device: str, dtype):
    from saelens_amort.saes import load_sae

    if spec == ORACLE and world is not None:
        from saelens_amort.world.saes import oracle_sae

        return oracle_sae(world).to(device)
    return load_sae(spec, device=device, dtype=dtype)


def make_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SaeAmortError(f"cannot create --out {out} ({e.strerror or e})") from None


def default_specs(cfg) -> tuple[str, ...]:
    """The SAEs to evaluate when none are named: the model's default suite, or on a world its shipped SAEs and the
    oracle."""
    from saelens_amort.saes.suites import default_suite

    if cfg.activations is None:
        return default_suite(cfg.model, cfg.layer)
    from saelens_amort.world import World
    from saelens_amort.world.saes import default_world_suite
    from saelens_amort.world.store import WORLD_FILE

    if not (Path(cfg.activations) / WORLD_FILE).exists():
        raise SaeAmortError(f"--activations {cfg.activations}: name the SAEs to evaluate with --sae / --sae-path")
    return default_world_suite(World.open(cfg.activations))
