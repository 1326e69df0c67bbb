"""`saeamort train`: one SAE family on a model's cached activations with SAE-Lens' trainer.

Layout of --out:
    train_config.json       the resolved TrainConfig (a different config in the same --out is refused)
    train_log.jsonl         per step: loss terms, loss, L0, dead fraction, explained variance
    checkpoints/<samples>/  SAE-Lens checkpoints every --checkpoint-every steps (weights + trainer state)
    pretrain_topk/          LocA only: the global TopK SAE it starts from (inference format)
    sae/                    the final SAE in SAE-Lens inference format (`SAE.load_from_disk`; LocA after
                            `import saelens_amort`), written to a temporary folder and renamed
    summary.json            final held-out NMSE, explained variance, L0, dead fraction, wall time

`--resume` continues from the newest checkpoint (weights, optimiser, schedulers, counters; the data stream skips the
batches already seen). `--live` trains on activations computed on the fly (nothing cached; rows shuffled within a
buffer of SHUFFLE_BATCHES batches; the first HELD_OUT_ROWS rows of the stream are held out).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from saelens_amort.atomic import write_dir_atomic, write_text_atomic
from saelens_amort.devices import on_device
from saelens_amort.errors import SaeAmortError
from saelens_amort.training.config import TrainConfig
from saelens_amort.training.families import make_training_sae

logger = logging.getLogger(__name__)

HELD_OUT_ROWS = 4096


def store_batches(store, batch_size: int, seed: int, skip: int = 0, limit: int | None = None
                  ) -> Iterator[torch.Tensor]:
    """Endless minibatches over the store's first `limit` rows, shuffled within each shard (memory: one shard); the
    first `skip` batches are dropped (resume)."""
    epoch, carry, produced = 0, None, 0
    while True:
        offset = 0
        for i, shard in enumerate(store.iter_shards()):
            acts = shard.acts.float()
            if limit is not None:
                acts = acts[: max(0, limit - offset)]
            offset += shard.acts.shape[0]
            if acts.shape[0] == 0:
                continue
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 10_007 + i)
            acts = acts[torch.randperm(acts.shape[0], generator=gen)]
            if carry is not None:
                acts = torch.cat([carry, acts])
            n_full = acts.shape[0] // batch_size
            for b in range(n_full):
                produced += 1
                if produced > skip:
                    yield acts[b * batch_size:(b + 1) * batch_size]
            carry = acts[n_full * batch_size:]
        epoch += 1


SHUFFLE_BATCHES = 16
"""Live training shuffles rows within a buffer of this many batches."""


def live_batches(rows, batch_size: int, seed: int, skip: int = 0) -> Iterator[torch.Tensor]:
    """Minibatches from a live stream of ActivationBatch rows, shuffled within a buffer of SHUFFLE_BATCHES batches;
    the first `skip` are dropped (resume: the stream is deterministic for a seeded source)."""
    gen = torch.Generator().manual_seed(seed)
    buffer, produced = [], 0
    for batch in rows:
        buffer.append(batch.acts.float())
        while sum(b.shape[0] for b in buffer) >= SHUFFLE_BATCHES * batch_size:
            pool = torch.cat(buffer)
            pool = pool[torch.randperm(pool.shape[0], generator=gen)]
            n = pool.shape[0] // batch_size * batch_size
            buffer = [pool[n:]]
            for b in pool[:n].split(batch_size):
                produced += 1
                if produced > skip:
                    yield b
    raise SaeAmortError("the live source ran out of text before training finished; use a larger source or fewer "
                        "--tokens")


def _trainer_class():
    from sae_lens import SAETrainer

    class LoggingTrainer(SAETrainer):
        """SAETrainer that appends one JSON line per step and drives a rich progress bar."""

        log_file = None
        progress = None
        task = None

        def _update_pbar(self, step_output, pbar, update_interval: int = 100) -> None:
            with torch.no_grad():
                x, x_hat = step_output.sae_in.float(), step_output.sae_out.float()
                resid = (x - x_hat).pow(2).sum()
                ev = 1 - resid / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
                acts = step_output.feature_acts
                acts = acts.to_dense() if acts.is_sparse else acts
                record = {"step": self.n_training_steps, "loss": float(step_output.loss),
                          **{k: float(v) for k, v in step_output.losses.items()},
                          "l0": float((acts > 0).sum(-1).float().mean()),
                          "dead_fraction": float(self.dead_neurons.float().mean()),
                          "explained_variance": float(ev)}
            if self.log_file is not None:
                self.log_file.write(json.dumps(record) + "\n")
            if self.progress is not None:
                self.progress.update(self.task, completed=self.n_training_steps,
                                     description=f"loss {record['loss']:.4g} L0 {record['l0']:.3g}")

    return LoggingTrainer


def _fit(sae, cfg: TrainConfig, data_fn, steps: int, out: Path, ckpt_dir: Path, resume_from: Path | None,
         progress: bool, *, new_log: bool = False) -> int:
    """SAETrainer on `data_fn(skip)` (minibatches after the first `skip`) for `steps` steps; `new_log` starts
    train_log.jsonl afresh (else it is continued, after dropping the steps past the checkpoint resumed from).
    Returns the steps this call trained (all of them, or those after the checkpoint it resumed from)."""
    from rich.progress import Progress
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * cfg.batch_size, train_batch_size_samples=cfg.batch_size, lr=cfg.lr,
        lr_end=cfg.lr if cfg.lr_end is None else cfg.lr_end, lr_scheduler_name=cfg.lr_scheduler, lr_warm_up_steps=cfg.lr_warm_up_steps,
        lr_decay_steps=cfg.lr_decay_steps, device=cfg.device, dead_feature_window=max(1, min(1000, steps // 4)),
        feature_sampling_window=max(1, min(2000, steps // 4)),
        n_checkpoints=max(0, steps // cfg.checkpoint_every - 1) if cfg.checkpoint_every else 0,
        checkpoint_path=str(ckpt_dir), logger=LoggingConfig(log_to_wandb=cfg.wandb),
    )
    skip = 0
    trainer_cls = _trainer_class()
    trainer = trainer_cls(trainer_cfg, sae, data_fn(0))
    if cfg.checkpoint_every:
        # SAE-Lens saves once n_training_samples > a threshold, i.e. a step after its evenly spaced thresholds; these
        # save after exactly checkpoint_every, 2·checkpoint_every, … steps (the last step's SAE is the run's output)
        trainer.checkpoint_thresholds = [k * cfg.checkpoint_every * cfg.batch_size - 1
                                         for k in range(1, -(-steps // cfg.checkpoint_every))]
    if resume_from is not None:
        trainer.load_trainer_state(resume_from)
        skip = trainer.n_training_samples // cfg.batch_size  # batches consumed
        # a checkpoint is saved inside a step, before SAE-Lens counts it: the weights already hold `skip` updates
        trainer.n_training_steps = skip
        trainer.data_provider = data_fn(skip)
        trainer.checkpoint_thresholds = [t for t in trainer.checkpoint_thresholds if t > trainer.n_training_samples]
        logger.info("resuming from %s at step %d", resume_from, skip)
        _trim_log(out / "train_log.jsonl", skip)
    with open(out / "train_log.jsonl", "w" if new_log else "a") as log, \
            Progress(disable=not progress, transient=True) as bar, _quiet_tqdm():
        trainer.log_file, trainer.progress = log, bar
        trainer.task = bar.add_task("training", total=steps, completed=skip)
        trainer.fit()
    return steps - skip


def _trim_log(path: Path, step: int) -> None:
    """Drop the records after the last one of `step` (steps an interrupted run logged past its last checkpoint)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    last = max((i for i, ln in enumerate(lines) if ln.strip() and json.loads(ln).get("step") == step), default=None)
    if last is not None and last + 1 < len(lines):
        write_text_atomic(path, "".join(lines[: last + 1]))


@contextlib.contextmanager
def _quiet_tqdm():
    """SAETrainer.fit draws its own tqdm bar; ours (rich, with L0) replaces it for the duration of the fit."""
    import sae_lens.training.sae_trainer as trainer_module

    original = trainer_module.tqdm
    trainer_module.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        trainer_module.tqdm = original


def _latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = [p for p in ckpt_dir.glob("*") if (p / "trainer_state.pt").is_file() and p.name.isdigit()]
    return max(found, key=lambda p: int(p.name)) if found else None


def _save_atomic(sae, final: Path) -> None:
    write_dir_atomic(final, sae.save_inference_model)


def check_out(out: Path, cfg: TrainConfig, overwrite: bool, resume: bool) -> None:
    saved = out / "train_config.json"
    if out.exists() and not out.is_dir():
        raise SaeAmortError(f"--out {out} is a file, not a folder; choose another --out")
    if not saved.exists():
        if resume:
            raise SaeAmortError(f"--resume: {out} holds no training run to resume")
        if out.exists() and any(out.iterdir()):  # another command's results, or anything else: never mixed into
            if not overwrite:
                raise SaeAmortError(f"{out} holds files not written by `saeamort train`; use another --out or pass "
                                    "--overwrite to replace them")
            shutil.rmtree(out)
        return
    same = json.loads(saved.read_text()) == cfg.as_json()
    if overwrite:
        shutil.rmtree(out)
    elif not same:
        raise SaeAmortError(f"{out} holds a training run with a different config; use another --out or --overwrite")
    elif not resume and (out / "sae").exists():
        raise SaeAmortError(f"{out} already holds this finished run; pass --overwrite to train it again")
    elif not resume:
        raise SaeAmortError(f"{out} holds an unfinished run of this config; pass --resume to continue it or "
                            "--overwrite to start over")


def run_train(cfg: TrainConfig, out: Path, *, overwrite: bool = False, resume: bool = False,
              progress: bool = True) -> dict:
    from sae_lens import TopKTrainingSAE

    from saelens_amort.activations import ActivationStore, CollectConfig, collect_activations, resolve_source
    from saelens_amort.activations.collect import live_activations
    from saelens_amort.models import load_model
    from saelens_amort.runners.collect import resolve_hook
    from saelens_amort.saes import load_sae
    from saelens_amort.training.loca import loca_from_topk

    out = Path(out)
    cfg = on_device(cfg)
    check_out(out, cfg, overwrite, resume)
    if cfg.activations is not None:
        store = ActivationStore.open(cfg.activations)
        if store.n_tokens < cfg.tokens + HELD_OUT_ROWS:
            raise SaeAmortError(f"--activations {cfg.activations} holds {store.n_tokens} rows; training on "
                                f"{cfg.tokens} plus {HELD_OUT_ROWS} held out needs {cfg.tokens + HELD_OUT_ROWS}")
        d_in, hook, model_name = store.d_in, store.hook_name, store.model_name
    else:
        model = load_model(cfg.model, device=cfg.device)
        d_in, model_name = model.cfg.d_model, cfg.model
        hook = resolve_hook(model.cfg.n_layers, cfg.layer, cfg.hook)
        source = resolve_source(cfg.source or ("toy" if cfg.model == "toy" else "hf:monology/pile-uncopyrighted"),
                                seed=cfg.seed)
        request = CollectConfig(hook_name=hook, n_tokens=cfg.tokens + HELD_OUT_ROWS, context_size=cfg.context_size,
                                seed=cfg.seed)
    cfg.check_fits(d_in)
    if cfg.live:  # held-out rows: the first HELD_OUT_ROWS of the stream; training: everything after them
        held_out = _first_rows(live_activations(model, source, request), HELD_OUT_ROWS)

        def data_fn(skip: int) -> Iterator[torch.Tensor]:
            stream = _drop_rows(live_activations(model, source, request), HELD_OUT_ROWS)
            return live_batches(stream, cfg.batch_size, cfg.seed, skip)

        def sample(n: int) -> torch.Tensor:
            return _first_rows(_drop_rows(live_activations(model, source, request), HELD_OUT_ROWS), n)
    else:
        if cfg.activations is None:
            store = collect_activations(model, source, request, None, model_name=cfg.model, progress=progress)
        held_out = held_out_rows(store, cfg.tokens)

        def data_fn(skip: int) -> Iterator[torch.Tensor]:
            return store_batches(store, cfg.batch_size, cfg.seed, skip=skip, limit=cfg.tokens)

        def sample(n: int) -> torch.Tensor:
            return store.load(min(store.n_tokens, n)).acts.float()
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "train_config.json", json.dumps(cfg.as_json(), indent=2))
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    steps, trained = cfg.n_steps, 0
    ckpt_dir = out / "checkpoints"
    if cfg.arch == "loca":
        pre_steps = max(1, int(steps * cfg.loca_pretrain_fraction))
        pre_dir = out / "pretrain_topk"
        if (pre_dir / "done").exists():
            topk = TopKTrainingSAE.load_from_disk(pre_dir / "training")
        else:
            topk = make_training_sae(cfg, d_in, hook, model_name)
            pre_ckpt = out / "pretrain_checkpoints"
            pre_resume = _latest_checkpoint(pre_ckpt) if resume else None
            trained += _fit(topk, cfg, data_fn, pre_steps, out, pre_ckpt, pre_resume, progress,
                            new_log=pre_resume is None)
            pre_dir.mkdir(exist_ok=True)
            topk.save_model(str(pre_dir / "training"))
            topk.save_inference_model(pre_dir / "inference")
            (pre_dir / "done").write_text("")
        resume_ckpt = _latest_checkpoint(ckpt_dir) if resume else None
        sae = loca_from_topk(topk, sample(32_768), cfg.budgets)
        if resume_ckpt is not None:
            sae.load_state_dict(_load_training_weights(resume_ckpt))
        def fresh_data_fn(skip: int) -> Iterator[torch.Tensor]:  # the batches after the pretraining ones
            return data_fn(pre_steps + skip)

        trained += _fit(sae, cfg, fresh_data_fn, steps - pre_steps, out, ckpt_dir, resume_ckpt, progress)
    else:
        sae = make_training_sae(cfg, d_in, hook, model_name)
        resume_ckpt = _latest_checkpoint(ckpt_dir) if resume else None
        if resume_ckpt is not None:
            sae.load_state_dict(_load_training_weights(resume_ckpt))
        trained += _fit(sae, cfg, data_fn, steps, out, ckpt_dir, resume_ckpt, progress, new_log=resume_ckpt is None)
    seconds = time.perf_counter() - start
    _save_atomic(sae, out / "sae")
    final = load_sae(str(out / "sae"))  # scored as saved, not as trained in memory
    summary = {"arch": cfg.arch, "steps": steps, "train_seconds": seconds,
               "steps_this_run": trained,  # after a resume: the steps past its checkpoint
               "tokens_per_second": trained * cfg.batch_size / seconds, "held_out_rows": int(held_out.shape[0]),
               **reconstruction_scores(final, held_out)}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return summary


@torch.no_grad()
def reconstruction_scores(sae, x: torch.Tensor) -> dict[str, float]:
    """NMSE (the paper's, uncentred), explained variance, mean L0 and the fraction of latents silent on `x`."""
    z = sae.encode(x)
    x64, err = x.double(), (x.double() - sae.decode(z).double()).pow(2).sum()
    return {"nmse": float(err / x64.pow(2).sum()),
            "explained_variance": float(1 - err / (x64 - x64.mean(0)).pow(2).sum()),
            "l0": float((z > 0).sum(-1).float().mean()), "dead_fraction": float(((z > 0).sum(0) == 0).float().mean())}


def held_out_rows(store, train_tokens: int) -> torch.Tensor:
    """The store's rows after the first `train_tokens` (never trained on)."""
    rows = []
    seen = 0
    for shard in store.iter_shards():
        n = shard.acts.shape[0]
        if seen + n > train_tokens:
            rows.append(shard.acts[max(0, train_tokens - seen):].float())
        seen += n
    return torch.cat(rows) if rows else torch.zeros(0, store.d_in)


def _load_training_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "sae_weights.safetensors"))


def _drop_rows(batches, n: int):
    """The ActivationBatch stream after its first `n` rows."""
    for b in batches:
        if n >= b.n_rows:
            n -= b.n_rows
            continue
        yield b.rows(n) if n else b
        n = 0


def _first_rows(batches, n: int) -> torch.Tensor:
    """The first `n` activation rows of an ActivationBatch stream (fewer if it ends)."""
    out, have = [], 0
    for b in batches:
        out.append(b.acts.float()[: n - have])
        have += out[-1].shape[0]
        if have >= n:
            break
    return torch.cat(out) if out else torch.zeros(0)
