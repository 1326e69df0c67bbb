"""Runner for `saeamort eval`: every SAE × inference mode on the same streamed activations, one λ per SAE.

Orchestration only. Per SAE: λ is calibrated once on a calibration slice so the unamortized codes' density matches
the encoder's (DESIGN §3), and every λ-mode runs at it — so the amortization gap F(z_mode) − F(z*) compares codes on
one objective. Activations stream batch by batch through the metric accumulators (memory does not grow with
--tokens); spliced CE/KL runs on a few whole sequences rebuilt from the store's rows.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import pandas as pd
import torch

from saelens_amort.errors import SaeAmortError
from saelens_amort.provenance import provenance
from saelens_amort.atomic import write_atomic
from saelens_amort.run_folder import check_run_folder
from saelens_amort.runners.eval_inputs import (
    ORACLE,
    Inputs,
    SpliceTokens,
    load_inputs,
    load_eval_sae,
    make_out,
    model_activations,
    open_activations,
    splice_tokens,
)
from saelens_amort.runners.eval_partials import COMMAND, PARTIAL_DIR, load_partials, save_partial

logger = logging.getLogger(__name__)

BATCH_METRICS = ("reconstruction", "sparsity", "probes", "absorption", "gap", "cost")
LAMBDA_TARGETS = ("l0", "dense@0.1")
CALIBRATION_TOL = 0.05
"""λ is calibrated to the target density within this relative tolerance (calibrate_lambda's default)."""
GAP_SAMPLE = 4096
"""Per-token gaps kept per SAE for the report's distribution plot."""
COUNT_KEYS = ("n_tokens", "n_train", "n_test")
"""Counts that several metric families report: each family's goes in its own column, '<family>/<count>'."""


@dataclass(frozen=True)
class Variant:
    """One column of the comparison: a registered mode, and K when it is the semi mode."""

    label: str
    mode: str
    steps: int | None = None

    @property
    def options(self) -> dict[str, Any]:
        return {} if self.steps is None else {"steps": self.steps}


@dataclass(frozen=True)
class EvalConfig:
    model: str = "pythia-160m-deduped"
    """TransformerLens name, local HF checkpoint directory, or 'toy'."""
    layer: int | None = 8
    """Block whose hook_resid_post the SAEs read (ignored when `hook` is given)."""
    hook: str | None = None
    """Any hook name instead of `layer`."""
    saes: tuple[str, ...] = ()
    """SAE specs (toy/<family>, release/sae_id, a directory); empty = the model's default suite."""
    modes: tuple[str, ...] = ("amortized", "semi", "unamortized")
    """Registered inference modes to compare."""
    metrics: tuple[str, ...] = (*BATCH_METRICS, "splice")
    """Registered metric families to compute ('splice' = spliced CE / KL, which runs the model)."""
    semi_steps: int = 30
    """K for the semi-amortized mode."""
    semi_sweep: tuple[int, ...] = ()
    """`sweep-semi`: evaluate the semi mode at each of these K instead of `semi_steps` (one row each)."""
    tokens: int = 20_000
    """Activation rows evaluated (BOS and padding excluded)."""
    calib_tokens: int = 1024
    """Rows of the calibration slice used to choose λ (the first rows of the stream)."""
    source: str | None = None
    """Text source (default: the toy corpus for the toy model, the Pile for real models)."""
    lambda_target: str = "l0"
    """Match the encoder's mean L0 ('l0') or its dense rate at 0.1 ('dense@0.1')."""
    batch_size: int = 1024
    """Activation rows per inference batch."""
    splice_sequences: int = 16
    """Whole sequences for spliced CE / KL (0 skips it)."""
    context_size: int = 128
    """Tokens per sequence when collecting."""
    seed: int = 0
    """Seed of the toy corpus stream."""
    device: str = "cpu"
    """cpu, cuda or cuda:N."""
    llm_dtype: str | None = None
    """fp32 | bf16 | fp16 for the language model (None: as loaded)."""
    sae_dtype: str | None = None
    """fp32 | bf16 | fp16 for the SAEs (None: as stored); solves accumulate objectives in fp32 regardless."""
    activations: str | None = None
    """Evaluate on this activation store (e.g. a ground-truth world) instead of the model's activations: metrics
    that need the language model (spliced CE / KL) are skipped; on a world, the truth metrics are added."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form options recorded with the results."""

    def __post_init__(self) -> None:
        from saelens_amort.inference import list_modes

        unknown = [m for m in self.modes if m not in list_modes()]
        if unknown:
            raise SaeAmortError(f"unknown mode(s) {', '.join(unknown)}; registered modes: {', '.join(list_modes())}")
        if not self.modes:
            raise SaeAmortError("give at least one mode")
        from saelens_amort.metrics import list_metrics

        unknown = [m for m in self.metrics if m not in list_metrics()]
        if unknown or not self.metrics:
            raise SaeAmortError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; registered metrics: "
                                f"{', '.join(list_metrics())}")
        if self.lambda_target not in LAMBDA_TARGETS:
            raise SaeAmortError(f"unknown --lambda-target {self.lambda_target!r}; use one of {', '.join(LAMBDA_TARGETS)}")
        if self.tokens <= 0 or self.calib_tokens <= 0 or self.batch_size <= 0 or self.semi_steps < 0:
            raise SaeAmortError("--tokens, --calib-tokens and --batch-size must be positive, --semi-steps ≥ 0")
        if any(k <= 0 for k in self.semi_sweep) or len(set(self.semi_sweep)) != len(self.semi_sweep):
            raise SaeAmortError(f"--steps must be distinct positive integers, got {list(self.semi_sweep)}")
        if self.tokens < self.calib_tokens:
            raise SaeAmortError(f"--tokens ({self.tokens}) is smaller than the calibration slice ({self.calib_tokens}); "
                                f"use --tokens ≥ {self.calib_tokens} or a smaller --calib-tokens")

    def variants(self) -> list[Variant]:
        """What is evaluated per SAE: each mode once, or the semi mode once per K of a sweep."""
        out = []
        for mode in self.modes:
            if mode == "semi" and self.semi_sweep:
                out += [Variant(f"semi@{k}", "semi", k) for k in self.semi_sweep]
            else:
                out.append(Variant(mode, mode, self.semi_steps if mode == "semi" else None))
        return out

    def resolved_source(self) -> str:
        if self.source:
            return self.source
        return "toy" if self.model == "toy" else "hf:monology/pile-uncopyrighted"

    def as_json(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))


def check_out_dir(out: Path, cfg: EvalConfig, overwrite: bool) -> None:
    """Refuse an --out that holds another run (unless overwrite); the same config resumes."""
    check_run_folder(out, COMMAND, cfg.as_json(), overwrite=overwrite)


def evaluate_sae(spec: str, sae, model, store, hook: str, cfg: EvalConfig,
                 splice_toks: SpliceTokens | None, world=None) -> tuple[list[dict], dict]:
    """All variants of one SAE: rows for the results table and artifacts for the report. `model` is None for an
    activation-only evaluation; `world` (a ground-truth World) adds the truth metrics."""
    from saelens_amort import distributed as dist
    from saelens_amort.inference import get_mode, infer
    from saelens_amort.metrics import make_metric, metric_batch, splice_reference, spliced_metrics
    from saelens_amort.metrics.splice import ce_recovered_problem
    from saelens_amort.runners.eval_lambda import calibrate_eval_lambda, calibration_rows_to_load
    from saelens_amort.saes import Dictionary

    variants = cfg.variants()
    dictionary = Dictionary.of(sae)
    needs_lam = any(v.mode != "amortized" for v in variants)
    warm = {v.label for v in variants if get_mode(v.mode).encoder_start}  # start from the batch's encoder code
    found = None
    if needs_lam:  # on rank 0, broadcast: every rank solves at the same λ
        if dist.is_main():
            n_load = calibration_rows_to_load(cfg.calib_tokens, cfg.batch_size, store.n_tokens)
            found = calibrate_eval_lambda(store.load(n_load).acts.to(cfg.device), sae, cfg.lambda_target,
                                          cfg.calib_tokens, cfg.batch_size)
        found = dist.broadcast(found)
    cal = found.calibration if found else None
    lam = cal.lam if cal else None
    label_names = store.label_names
    families = [m for m in cfg.metrics if m != "splice"]
    metrics = {v.label: {name: (make_metric(name, label_names=label_names) if name in ("probes", "absorption")
                                else make_metric(name)) for name in families} for v in variants}
    if world is not None:
        for v in variants:
            metrics[v.label]["truth"] = make_metric("truth", true_atoms=world.structure.atoms,
                                                    parent=world.structure.parent, sae_atoms=dictionary.atoms.cpu())
    truths = world.iter_truth(cfg.batch_size) if world is not None else itertools.repeat(None)
    gaps: list[np.ndarray] = []
    converged = {key: [0, 0] for key in [*metrics, "z*"]}  # rows whose stopping rule held, rows
    n_rows = min(store.n_tokens, cfg.tokens)  # a given store (--activations) may hold more rows than asked for
    mine = dist.block(-(-n_rows // cfg.batch_size))  # this rank's contiguous batches
    for i, (batch, truth) in enumerate(zip(store.iter_batches(cfg.batch_size), truths)):
        if i * cfg.batch_size >= n_rows:
            break
        if i not in mine:
            continue
        keep = n_rows - i * cfg.batch_size
        if keep < batch.n_rows:
            batch, truth = batch.rows(0, keep), None if truth is None else truth[:keep]
        x = batch.acts.to(cfg.device)
        star = infer(x, sae, "unamortized", lam=lam) if lam is not None else None
        encoded = infer(x, sae, "amortized", lam=lam) if warm or "amortized" in cfg.modes else None
        results = {}
        for v in variants:
            if v.mode == "unamortized" and star is not None:
                results[v.label] = star
            elif v.mode == "amortized":
                results[v.label] = encoded
            elif v.label in warm:  # the amortized mode's code of this very batch; its encoder time counts here too
                res = infer(x, sae, v.mode, lam=lam, init=encoded.codes, **v.options)
                results[v.label] = res._replace(seconds=res.seconds + encoded.seconds)
            else:
                results[v.label] = infer(x, sae, v.mode, lam=lam, **v.options)
        labels = batch.labels if label_names else None
        for label, res in [*results.items(), *([("z*", star)] if star is not None else [])]:
            converged[label] = [converged[label][0] + int(res.converged.sum()), converged[label][1] + len(res.codes)]
        for label, res in results.items():
            mb = metric_batch(x, res, dictionary, labels=labels, token_ids=batch.token_ids, doc_ids=batch.doc_ids,
                              objective_star=None if star is None else star.objective)._replace(truth=truth)
            for m in metrics[label].values():
                m.update(mb)
        if star is not None and "amortized" in results and sum(map(len, gaps)) < GAP_SAMPLE:
            gaps.append((results["amortized"].objective - star.objective).cpu().numpy())

    merged, all_gaps, all_converged = dist.merge_metrics(metrics), dist.gather(gaps), dist.gather(converged)
    if not dist.is_main():
        return [], {"freqs": {}, "gap": np.zeros(0)}
    metrics, gaps = merged, [g for part in all_gaps for g in part]
    counts = {key: np.sum([part[key] for part in all_converged], axis=0) for key in converged}
    converged_frac = {key: float(c / n) if n else None for key, (c, n) in counts.items()}
    use_splice = splice_toks is not None and "splice" in cfg.metrics
    reference = splice_reference(model, splice_toks.tokens, hook, splice_toks.lengths) if use_splice else None
    rows, freqs, splice_cache = [], {}, {}
    for v in variants:
        row: dict[str, Any] = {"sae": spec, "mode": v.label, "inference_mode": v.mode, "semi_steps": v.steps,
                               "architecture": sae.cfg.architecture(), "lam": lam,
                               "lambda_target": found.target if found else cfg.lambda_target,
                               "lambda_target_value": cal.target_value if cal else None,
                               "lambda_achieved": cal.achieved if cal else None,
                               "lambda_calib_rows": cal.n_rows if cal else None,
                               "converged_frac": converged_frac[v.label], "ref_converged_frac": converged_frac["z*"]}
        skipped: dict[str, str] = {}
        if found is not None and found.note:
            skipped[f"{cfg.lambda_target} target"] = found.note
        for name, m in metrics[v.label].items():
            row.update({f"{name}/{k}" if k in COUNT_KEYS else k: val for k, val in m.compute().items()})
            skipped.update(m.skipped)
            if name == "sparsity":
                freqs[(spec, v.label)] = np.asarray(m.artifacts()["firing_frequency"])
        if reference is not None:
            for keep in (False, True):
                sp = spliced_metrics(model, sae, v.mode, splice_toks.tokens, hook, lam=lam, keep_error=keep,
                                     reference=reference, cache=splice_cache, **v.options)
                tag = "_keep_error" if keep else ""
                row.update({"ce_clean": sp.ce_clean, "ce_zero": sp.ce_zero, f"ce_spliced{tag}": sp.ce_spliced,
                            f"ce_recovered{tag}": sp.ce_recovered, f"kl{tag}": sp.kl, "splice/n_tokens": sp.n_tokens})
                if sp.ce_recovered is None:
                    skipped[f"ce_recovered{tag}"] = ce_recovered_problem(sp.ce_clean, sp.ce_zero)
        if model is None and "splice" in cfg.metrics:
            skipped["splice"] = "activation-only evaluation (--activations): no language model to splice into"
        if cal is not None and abs(cal.achieved - cal.target_value) > CALIBRATION_TOL * cal.target_value:
            skipped["matched density"] = (f"no λ reaches the target {cal.target_value:.4g}; closest "
                                          f"{cal.achieved:.4g} at λ={cal.lam:.3g}")
        row["skipped"] = "; ".join(f"{k}: {why}" for k, why in sorted(skipped.items()))
        rows.append(row)
    gap = np.concatenate(gaps)[:GAP_SAMPLE] if gaps else np.zeros(0)
    return rows, {"freqs": freqs, "gap": gap}


@dataclass
class Evaluation:
    """What `evaluate` produced: the table (one row per SAE × variant) and the report's raw material."""

    df: pd.DataFrame
    freqs: dict
    """(sae, variant) → firing frequency per latent."""
    gaps: dict
    """sae → per-token amortization gaps (a sample)."""
    hook: str
    store: Any


def run_eval(cfg: EvalConfig, out: Path, *, overwrite: bool = False, progress: bool = True) -> pd.DataFrame:
    """`saeamort eval` / `sweep-semi`: evaluate, then write results.{parquet,csv,json} and report.html in `out`."""
    from saelens_amort import distributed as dist

    dist.init(cfg.device)
    out = Path(out)
    check_out_dir(out, cfg, overwrite)
    ev = evaluate(cfg, cfg.saes or _default_specs(cfg), out, progress=progress)
    if dist.is_main():
        write_outputs(out, ev, cfg)
    dist.barrier()  # the other ranks return once the outputs exist
    return ev.df


def _default_specs(cfg: EvalConfig) -> tuple[str, ...]:
    from saelens_amort.saes.suites import default_suite

    if cfg.activations is None:
        return default_suite(cfg.model, cfg.layer)
    from saelens_amort.world import World
    from saelens_amort.world.saes import default_world_suite
    from saelens_amort.world.store import WORLD_FILE

    if not (Path(cfg.activations) / WORLD_FILE).exists():
        raise SaeAmortError(f"--activations {cfg.activations}: name the SAEs to evaluate with --sae / --sae-path")
    return default_world_suite(World.open(cfg.activations))


def evaluate(cfg: EvalConfig, specs: tuple[str, ...], out: Path, *, progress: bool = True) -> Evaluation:
    """Load everything (`load_inputs`) and evaluate the SAEs one at a time (one SAE in memory at once)."""
    from saelens_amort import distributed as dist

    model, hook, store, splice_toks, sae_dtype, world = load_inputs(cfg, specs, out, progress=progress)
    rows, freqs, gaps = [], {}, {}
    done = load_partials(out, cfg.as_json()) if dist.is_main() else {}  # results stay on rank 0; the others learn which
    finished = set(dist.broadcast(sorted(done)))
    for i, spec in enumerate(specs):
        if i in finished:  # finished by an interrupted earlier run of this config
            logger.info("[%d/%d] %s: already evaluated, reusing its results", i + 1, len(specs), spec)
            r, art = done.get(i, ([], {"freqs": {}, "gap": np.zeros(0)}))
        else:
            logger.info("[%d/%d] evaluating %s (%s)", i + 1, len(specs), spec,
                        ", ".join(v.label for v in cfg.variants()))
            r, art = evaluate_sae(spec, load_eval_sae(spec, world, cfg.device, sae_dtype), model, store, hook, cfg,
                                  splice_toks, world)
            if dist.is_main():
                save_partial(out, cfg.as_json(), i, r, art)
        rows += r
        freqs.update(art["freqs"])
        if art["gap"].size:
            gaps[spec] = art["gap"]
    return Evaluation(pd.DataFrame(rows), freqs, gaps, hook, store)


def write_outputs(out: Path, ev: Evaluation, cfg: EvalConfig, *, extra_meta: dict | None = None,
                  extra_sections: list | None = None) -> None:
    """results.parquet, results.csv, report.html, then results.json (last: its presence marks a complete run)."""
    from saelens_amort.runners.eval_report import build_report

    df = ev.df
    meta = {"config": cfg.as_json(), "hook_name": ev.hook, "activation_store": str(ev.store.path),
            "lambda": {r["sae"]: r["lam"] for r in df.to_dict("records")}, "provenance": provenance(),
            **(extra_meta or {}), "rows": json.loads(df.to_json(orient="records"))}
    write_atomic(out / "results.parquet", lambda p: df.to_parquet(p, index=False))
    write_atomic(out / "results.csv", lambda p: df.to_csv(p, index=False))
    build_report(out / "report.html", df, ev.freqs, ev.gaps, meta, extra_sections=extra_sections)
    write_atomic(out / "results.json", lambda p: p.write_text(json.dumps(meta, indent=2, default=_json_default)))
    shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)


def _json_default(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    return str(v)
