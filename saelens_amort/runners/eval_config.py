"""What `saeamort eval` is asked to do: the EvalConfig (model, SAEs, modes, protocol, λ policy, metrics, sizes),
checked when built so a bad option fails before anything loads."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from saelens_amort.catalog import PAPER_SEMI_STEPS, SEMI_STEPS, check_modes, known_metrics
from saelens_amort.devices import parse_device, parse_dtype
from saelens_amort.errors import SaeAmortError
from saelens_amort.runners.eval_protocol import (
    DEFAULT_MODES,
    LAMBDA_POLICIES,
    PAPER_MODES,
    PAPER_TARGET,
    PROTOCOLS,
    Variant,
    make_variants,
    split_mode,
)

BATCH_METRICS = ("reconstruction", "sparsity", "probes", "absorption", "gap", "cost")
LAMBDA_TARGETS = ("l0", "dense@0.1")


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
    modes: tuple[str, ...] = ()
    """Registered inference modes to compare, each optionally with '+refit'; empty = the protocol's default."""
    protocol: str = "fair"
    """'fair' (per-mode λ, prior-matched modes) or 'paper' (the reference choices exactly; `eval_protocol`)."""
    lambda_policy: str | None = None
    """'per-mode' (each λ-mode its own λ) or 'shared' (the unamortized mode's λ for all); None: the protocol's."""
    metrics: tuple[str, ...] = (*BATCH_METRICS, "splice")
    """Registered metric families to compute ('splice' = spliced CE / KL, which runs the model)."""
    semi_steps: int | None = None
    """K for the semi-amortized mode; None: the protocol's (fair 10, paper 30)."""
    semi_sweep: tuple[int, ...] = ()
    """`sweep-semi`: evaluate the semi mode at each of these K instead of `semi_steps` (one row each)."""
    tokens: int = 20_000
    """Activation rows evaluated (BOS and padding excluded)."""
    calib_tokens: int = 1024
    """Rows of the calibration slice used to choose λ (the first rows of the stream)."""
    source: str | None = None
    """Text source (default: the toy corpus for the toy model, the Pile for real models)."""
    lambda_target: str | None = None
    """Match the encoder's mean L0 ('l0') or its dense rate at 0.1 ('dense@0.1'); None: the protocol's (l0, paper
    dense@0.1)."""
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
        # torch-free checks: a bad option answers before anything heavy loads (the runner resolves the device)
        if self.protocol not in PROTOCOLS:
            raise SaeAmortError(f"unknown --protocol {self.protocol!r}; use one of {', '.join(PROTOCOLS)}")
        if self.lambda_policy is not None and self.lambda_policy not in LAMBDA_POLICIES:
            raise SaeAmortError(f"unknown --lambda {self.lambda_policy!r}; use one of {', '.join(LAMBDA_POLICIES)}")
        if self.lambda_target is not None and self.lambda_target not in LAMBDA_TARGETS:
            raise SaeAmortError(f"unknown --lambda-target {self.lambda_target!r}; use one of {', '.join(LAMBDA_TARGETS)}")
        if self.tokens <= 0 or self.calib_tokens <= 0 or self.batch_size <= 0 or (self.semi_steps or 0) < 0:
            raise SaeAmortError("--tokens, --calib-tokens and --batch-size must be positive, --semi-steps ≥ 0")
        if any(k <= 0 for k in self.semi_sweep) or len(set(self.semi_sweep)) != len(self.semi_sweep):
            raise SaeAmortError(f"--steps must be distinct positive integers, got {list(self.semi_sweep)}")
        if self.tokens < self.calib_tokens:
            raise SaeAmortError(f"--tokens ({self.tokens}) is smaller than the calibration slice ({self.calib_tokens}); "
                                f"use --tokens ≥ {self.calib_tokens} or a smaller --calib-tokens")
        parse_device(self.device)
        parse_dtype(self.llm_dtype, "--llm-dtype")
        parse_dtype(self.sae_dtype, "--sae-dtype")
        if self.modes:  # none: the protocol's
            check_modes(self.modes, base=lambda m: split_mode(m)[0], note=" (each may take '+refit')")
        unknown = [m for m in self.metrics if m not in known_metrics()]
        if unknown or not self.metrics:
            raise SaeAmortError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; registered metrics: "
                                f"{', '.join(known_metrics())}")
        if "truth" in self.metrics and self.activations is None:
            raise SaeAmortError("--metrics truth needs a ground-truth world: pass --activations DIR of `saeamort world "
                                "build` (on a world the truth metrics are added by themselves)")

    @property
    def resolved_modes(self) -> tuple[str, ...]:
        return self.modes or (PAPER_MODES if self.protocol == "paper" else DEFAULT_MODES)

    @property
    def resolved_target(self) -> str:
        return self.lambda_target or (PAPER_TARGET if self.protocol == "paper" else "l0")

    @property
    def resolved_semi_steps(self) -> int:
        if self.semi_steps is not None:
            return self.semi_steps
        return PAPER_SEMI_STEPS if self.protocol == "paper" else SEMI_STEPS

    @property
    def shared_lambda(self) -> bool:
        return (self.lambda_policy or ("shared" if self.protocol == "paper" else "per-mode")) == "shared"

    def variants(self) -> list[Variant]:
        """What is evaluated per SAE: each mode once, or the semi mode once per K of a sweep (`eval_protocol`)."""
        return make_variants(self.resolved_modes, self.resolved_semi_steps, self.semi_sweep, self.protocol)

    def resolved_source(self) -> str:
        if self.source:
            return self.source
        return "toy" if self.model == "toy" else "hf:monology/pile-uncopyrighted"

    def as_json(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))

    @classmethod
    def from_json(cls, data: dict) -> "EvalConfig":
        """The config `as_json` wrote (its lists back to tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
