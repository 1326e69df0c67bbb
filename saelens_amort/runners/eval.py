"""Runner for `saeamort eval`: every SAE × inference mode on the same streamed activations, one λ per SAE.

Orchestration only. Per SAE: λ is calibrated once on a calibration slice so the unamortized codes' density matches
the encoder's (DESIGN §3), and every λ-mode runs at it — so the amortization gap F(z_mode) − F(z*) compares codes on
one objective. Activations stream batch by batch through the metric accumulators (memory does not grow with
--tokens); spliced CE/KL runs on a few whole sequences rebuilt from the store's rows.
"""

from __future__ import annotations

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
from saelens_amort.runners.eval_partials import COMMAND, PARTIAL_DIR, load_partials, save_partial

logger = logging.getLogger(__name__)

BATCH_METRICS = ("reconstruction", "sparsity", "probes", "absorption", "gap", "cost")
LAMBDA_TARGETS = ("l0", "dense@0.1")
CALIBRATION_TOL = 0.05
"""λ is calibrated to the target density within this relative tolerance (calibrate_lambda's default)."""
GAP_SAMPLE = 4096
"""Per-token gaps kept per SAE for the report's distribution plot."""


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


class SpliceTokens(NamedTuple):
    """Right-padded sequences and their real lengths (BOS included): padding is known by length, not by token id."""

    tokens: torch.Tensor
    lengths: torch.Tensor


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
    return SpliceTokens(out, torch.tensor([len(s) for s in seqs]))


def evaluate_sae(spec: str, sae, model, store, hook: str, cfg: EvalConfig,
                 splice_toks: SpliceTokens | None) -> tuple[list[dict], dict]:
    """All variants of one SAE: rows for the results table and artifacts for the report."""
    from saelens_amort import distributed as dist
    from saelens_amort.inference import calibrate_lambda, infer
    from saelens_amort.metrics import make_metric, metric_batch, splice_reference, spliced_metrics
    from saelens_amort.metrics.splice import ce_recovered_problem
    from saelens_amort.saes import Dictionary

    variants = cfg.variants()
    dictionary = Dictionary.of(sae)
    needs_lam = any(v.mode != "amortized" for v in variants)
    cal = None
    if needs_lam:  # on rank 0, broadcast: every rank solves at the same λ
        if dist.is_main():
            x_cal = store.load(cfg.calib_tokens).acts.to(cfg.device)
            cal = calibrate_lambda(x_cal, sae, "unamortized", target=cfg.lambda_target, strict=False)
        cal = dist.broadcast(cal)
    lam = cal.lam if cal else None
    label_names = store.label_names
    families = [m for m in cfg.metrics if m != "splice"]
    metrics = {v.label: {name: (make_metric(name, label_names=label_names) if name in ("probes", "absorption")
                                else make_metric(name)) for name in families} for v in variants}
    gaps: list[np.ndarray] = []
    mine = dist.block(-(-store.n_tokens // cfg.batch_size))  # this rank's contiguous batches
    for i, batch in enumerate(store.iter_batches(cfg.batch_size)):
        if i not in mine:
            continue
        x = batch.acts.to(cfg.device)
        star = infer(x, sae, "unamortized", lam=lam) if lam is not None else None
        results = {}
        for v in variants:
            if v.mode == "unamortized" and star is not None:
                results[v.label] = star
            else:
                results[v.label] = infer(x, sae, v.mode, lam=lam, **v.options)
        labels = batch.labels if label_names else None
        for label, res in results.items():
            mb = metric_batch(x, res, dictionary, labels=labels, token_ids=batch.token_ids, doc_ids=batch.doc_ids,
                              objective_star=None if star is None else star.objective)
            for m in metrics[label].values():
                m.update(mb)
        if star is not None and "amortized" in results and sum(map(len, gaps)) < GAP_SAMPLE:
            gaps.append((results["amortized"].objective - star.objective).cpu().numpy())

    merged, all_gaps = dist.merge_metrics(metrics), dist.gather(gaps)
    if not dist.is_main():
        return [], {"freqs": {}, "gap": np.zeros(0)}
    metrics, gaps = merged, [g for part in all_gaps for g in part]
    use_splice = splice_toks is not None and "splice" in cfg.metrics
    reference = splice_reference(model, splice_toks.tokens, hook, splice_toks.lengths) if use_splice else None
    rows, freqs, splice_cache = [], {}, {}
    for v in variants:
        row: dict[str, Any] = {"sae": spec, "mode": v.label, "inference_mode": v.mode, "semi_steps": v.steps,
                               "architecture": sae.cfg.architecture(), "lam": lam, "lambda_target": cfg.lambda_target,
                               "lambda_target_value": cal.target_value if cal else None,
                               "lambda_achieved": cal.achieved if cal else None}
        skipped: dict[str, str] = {}
        for name, m in metrics[v.label].items():
            row.update({k: val for k, val in m.compute().items() if not k.startswith("n_")})
            skipped.update(m.skipped)
            if name == "sparsity":
                freqs[(spec, v.label)] = np.asarray(m.artifacts()["firing_frequency"])
        if reference is not None:
            for keep in (False, True):
                sp = spliced_metrics(model, sae, v.mode, splice_toks.tokens, hook, lam=lam, keep_error=keep,
                                     reference=reference, cache=splice_cache, **v.options)
                tag = "_keep_error" if keep else ""
                row.update({"ce_clean": sp.ce_clean, "ce_zero": sp.ce_zero, f"ce_spliced{tag}": sp.ce_spliced,
                            f"ce_recovered{tag}": sp.ce_recovered, f"kl{tag}": sp.kl})
                if sp.ce_recovered is None:
                    skipped[f"ce_recovered{tag}"] = ce_recovered_problem(sp.ce_clean, sp.ce_zero)
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
    from saelens_amort.saes.suites import default_suite

    from saelens_amort import distributed as dist

    dist.init(cfg.device)
    out = Path(out)
    check_out_dir(out, cfg, overwrite)
    ev = evaluate(cfg, cfg.saes or default_suite(cfg.model, cfg.layer), out, progress=progress)
    if dist.is_main():
        write_outputs(out, ev, cfg)
    dist.barrier()  # the other ranks return once the outputs exist
    return ev.df


class Inputs(NamedTuple):
    """What every SAE of a run is evaluated on: the model, the hook, the streamed activations, splice sequences."""

    model: Any
    hook: str
    store: Any
    splice_toks: SpliceTokens | None
    sae_dtype: torch.dtype | None


def load_inputs(cfg: EvalConfig, specs: tuple[str, ...], out: Path, *, progress: bool = True,
                check_sae: Callable[[Any], None] | None = None) -> Inputs:
    """Load the model and every SAE (checking each fits, and `check_sae(sae)` when given, before any work), create
    `out`, and stream the activations once (cached)."""
    from saelens_amort.activations import CollectConfig, collect_activations, resolve_source
    from saelens_amort.models import load_model
    from saelens_amort.runners.collect import resolve_hook
    from saelens_amort.saes import check_sae_fits, load_sae

    from saelens_amort.devices import check_device, resolve_dtype

    check_device(cfg.device)
    llm_dtype = resolve_dtype(cfg.llm_dtype, cfg.device, "--llm-dtype")
    sae_dtype = resolve_dtype(cfg.sae_dtype, cfg.device, "--sae-dtype")
    try:  # the model and the text source are what an offline machine lacks: say how to run the study anyway
        model = load_model(cfg.model, device=cfg.device, dtype=llm_dtype)
        source = resolve_source(cfg.resolved_source(), seed=cfg.seed)
    except SaeAmortError as e:
        if cfg.model == "toy":
            raise
        raise SaeAmortError(f"{str(e).rstrip('.')}; the same study offline: saeamort eval --model toy") from None
    hook = resolve_hook(model.cfg.n_layers, cfg.layer, cfg.hook)
    for spec in specs:
        sae = load_sae(spec, device=cfg.device, dtype=sae_dtype)
        check_sae_fits(sae, model, hook)
        if check_sae is not None:
            check_sae(sae)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SaeAmortError(f"cannot create --out {out} ({e.strerror or e})") from None
    from saelens_amort import distributed as dist

    request = CollectConfig(hook_name=hook, n_tokens=cfg.tokens, context_size=cfg.context_size, seed=cfg.seed)
    if not dist.is_main():
        dist.barrier()  # rank 0 fills the activation cache; the others then read it
    store = collect_activations(model, source, request, None, model_name=cfg.model,
                                progress=progress and dist.is_main())
    if dist.is_main():
        dist.barrier()
    tok = model.tokenizer
    bos = tok.bos_token_id if tok is not None else None
    pad = (tok.pad_token_id if tok is not None and tok.pad_token_id is not None else 0)
    return Inputs(model, hook, store, splice_tokens(store, cfg.splice_sequences, bos, pad), sae_dtype)


def evaluate(cfg: EvalConfig, specs: tuple[str, ...], out: Path, *, progress: bool = True) -> Evaluation:
    """Load everything (`load_inputs`) and evaluate the SAEs one at a time (one SAE in memory at once)."""
    from saelens_amort.saes import load_sae
    from saelens_amort import distributed as dist

    model, hook, store, splice_toks, sae_dtype = load_inputs(cfg, specs, out, progress=progress)
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
            r, art = evaluate_sae(spec, load_sae(spec, device=cfg.device, dtype=sae_dtype), model, store, hook, cfg,
                                  splice_toks)
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
