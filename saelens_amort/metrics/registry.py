"""The metric registry, the batch every metric consumes, and the accumulator protocol (DESIGN §4).

A metric family is a streaming, mergeable accumulator class registered by name:

    metric = make_metric("reconstruction")
    for batch in batches:                    # MetricBatch per slice of tokens
        metric.update(batch)
    metric.merge(other_worker_metric)        # exact: sums, counts, histograms, first-N samples
    values = metric.compute()                # {"nmse": 0.012, "fvu": 0.05, …}; None where skipped
    metric.skipped                           # {"fvu": "activations have zero variance", …}

`compute()` always returns the same keys for a given configuration; a value it cannot produce is None and its key is
in `skipped` with a one-line reason (the report prints the reason instead of crashing). Non-scalar outputs (firing
frequencies, histograms, chosen latents) come from `artifacts()`.

`input_kind` says what `update` consumes: "batch" metrics take a `MetricBatch`; "splice" metrics take the
`SpliceResult` of `metrics.splice.spliced_metrics` (they need the model, not activations).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from saelens_amort.errors import SaeAmortError

if TYPE_CHECKING:
    from saelens_amort.inference.result import InferenceResult
    from saelens_amort.saes.dictionary import Dictionary

logger = logging.getLogger(__name__)


class MetricBatch(NamedTuple):
    """One slice of tokens as every batch metric sees it (rows aligned)."""

    x: Float[Tensor, "N d_in"]
    """Original activations at the hook."""
    recon: Float[Tensor, "N d_in"]
    """The reconstruction of x in x's own space (the SAE's decode of `codes`)."""
    codes: Float[Tensor, "N d_sae"]
    """Codes in the SAE's own code space."""
    labels: Int[Tensor, " N"] | None = None
    """Real labels per row (document class or token property); -1 where unknown; None when the source has none."""
    token_ids: Int[Tensor, " N"] | None = None
    doc_ids: Int[Tensor, " N"] | None = None
    """Document index per row; the probe split is by document when given (`doc_id % 5 == 0` → held out)."""
    objective: Float[Tensor, " N"] | None = None
    """F(z; x) of these codes at the run's λ (for the amortization gap)."""
    objective_star: Float[Tensor, " N"] | None = None
    """F(z*; x) of converged unamortized codes at the same λ."""
    n_iter: Int[Tensor, " N"] | None = None
    """Solver iterations per row (for FLOPs)."""
    seconds: float | None = None
    """Wall time the mode took on this batch (for cost)."""
    mode: str | None = None
    """The inference mode that produced `codes` (for FLOPs)."""
    truth: Float[Tensor, "N n_true"] | None = None
    """True codes per row, on a ground-truth world (for the truth metrics)."""
    flops: Float[Tensor, " N"] | None = None
    """FLOPs the mode ran per row, as it counted them (`InferenceResult.info["flops"]`; for cost)."""

    @property
    def n_rows(self) -> int:
        return int(self.x.shape[0])


def check_batch(batch: MetricBatch) -> MetricBatch:
    """Validate shapes (SaeAmortError naming the bad field); returns the batch detached, its per-row vectors flat
    and on x's device (metrics reduce on that device and keep only small, CPU state)."""
    if not isinstance(batch, MetricBatch):
        raise SaeAmortError(f"batch metrics take a MetricBatch, got {type(batch).__name__}")
    x, recon, codes = batch.x, batch.recon, batch.codes
    for name, t in (("x", x), ("recon", recon), ("codes", codes)):
        if not isinstance(t, Tensor) or t.ndim != 2:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise SaeAmortError(f"MetricBatch.{name} must be a 2-D tensor [N, …], got {shape}")
    n = x.shape[0]
    if recon.shape != x.shape:
        raise SaeAmortError(f"MetricBatch.recon has shape {tuple(recon.shape)}, x has {tuple(x.shape)}")
    if codes.shape[0] != n:
        raise SaeAmortError(f"MetricBatch.codes has {codes.shape[0]} rows, x has {n}")
    if recon.device != x.device or codes.device != x.device:
        raise SaeAmortError(f"MetricBatch tensors must share a device: x on {x.device}, recon on {recon.device}, "
                            f"codes on {codes.device}")
    fields: dict[str, Any] = {"x": x.detach(), "recon": recon.detach(), "codes": codes.detach()}
    for name in ("labels", "token_ids", "doc_ids", "objective", "objective_star", "n_iter", "flops"):
        t = getattr(batch, name)
        if t is None:
            continue
        if not isinstance(t, Tensor) or t.reshape(-1).shape[0] != n:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise SaeAmortError(f"MetricBatch.{name} must have one entry per row ({n}), got {shape}")
        fields[name] = t.detach().reshape(-1).to(x.device)
    return batch._replace(**fields)


def metric_batch(
    x: Float[Tensor, "N d_in"],
    result: "InferenceResult",
    dictionary: "Dictionary",
    *,
    labels: Tensor | None = None,
    token_ids: Tensor | None = None,
    doc_ids: Tensor | None = None,
    objective_star: Tensor | None = None,
) -> MetricBatch:
    """The MetricBatch of an `infer` result on x: recon = the SAE's decode of the codes, in x's space."""
    codes = result.codes.reshape(-1, dictionary.d_sae)
    x2 = x.reshape(-1, x.shape[-1])
    with torch.no_grad():
        recon = dictionary.decode_to_input_space(dictionary.from_sae_codes(codes.to(dictionary.atoms.dtype)), x2)
    return MetricBatch(
        x=x2, recon=recon.to(x2.dtype), codes=codes, labels=labels, token_ids=token_ids, doc_ids=doc_ids,
        objective=result.objective.reshape(-1), objective_star=objective_star, n_iter=result.n_iter.reshape(-1),
        seconds=result.seconds, mode=result.mode, flops=result.info.get("flops"),
    )


class Metric(ABC):
    """A streaming, mergeable accumulator for one metric family.

    Subclasses keep only bounded state (sums, counts, fixed histograms, documented first-N samples), so that
    `a.merge(b)` after streaming two halves equals one pass over both halves in order.
    """

    name: ClassVar[str] = ""
    input_kind: ClassVar[str] = "batch"
    """"batch": `update(MetricBatch)`; "splice": `update(SpliceResult)`."""

    def __init__(self) -> None:
        self.skipped: dict[str, str] = {}
        """Key → reason for every value the last `compute()` could not produce (its value is None)."""

    @abstractmethod
    def update(self, batch: Any) -> None:
        """Fold one batch into the state."""

    @abstractmethod
    def merge(self, other: "Metric") -> "Metric":
        """Fold another accumulator of the same family and options into this one (in place); returns self."""

    @abstractmethod
    def compute(self) -> dict[str, float | None]:
        """The metric values (None where skipped; reasons in `self.skipped`)."""

    def artifacts(self) -> dict[str, Any]:
        """Non-scalar outputs for the report (vectors, histograms, chosen latents); empty by default."""
        return {}

    def _check_mergeable(self, other: "Metric") -> None:
        if type(other) is not type(self):
            raise SaeAmortError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        if self._options() != other._options():
            raise SaeAmortError(f"cannot merge {self.name} accumulators with different options: "
                                f"{self._options()} vs {other._options()}")

    def _options(self) -> dict[str, Any]:
        """The constructor options that must agree for a merge."""
        return {}

    def _result(self, values: dict[str, float | None], skipped: dict[str, str]) -> dict[str, float | None]:
        """Record `skipped`, set their values to None, and cast tensors to floats."""
        self.skipped = dict(skipped)
        out: dict[str, float | None] = {}
        for key, value in values.items():
            if key in skipped or value is None:
                out[key] = None
            else:
                out[key] = float(value)
        for key in skipped:
            out.setdefault(key, None)
        return out


_METRICS: dict[str, type[Metric]] = {}


def register_metric(name: str, cls: type[Metric]) -> None:
    """Register metric family `cls` under `name` (re-registering the same class, or a re-imported one, is a no-op;
    another class under a taken name replaces it with a log line)."""
    if not isinstance(name, str) or not name.strip():
        raise SaeAmortError(f"a metric name must be a non-empty string, got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Metric)):
        raise SaeAmortError(f"metric {name!r}: expected a Metric subclass, got {cls!r}")
    old = _METRICS.get(name)
    same = old is not None and (old.__module__, old.__qualname__) == (cls.__module__, cls.__qualname__)
    if old is not None and old is not cls and not same:
        logger.info("replacing metric %r", name)
    _METRICS[name] = cls


def list_metrics() -> list[str]:
    """Registered metric names, in registration order."""
    return list(_METRICS)


def get_metric(name: str) -> type[Metric]:
    """The class registered as `name` (SaeAmortError listing the registered metrics if unknown)."""
    try:
        return _METRICS[name]
    except (KeyError, TypeError):
        raise SaeAmortError(f"unknown metric {name!r}; registered metrics: {', '.join(_METRICS)}") from None


def make_metric(name: str, **options: Any) -> Metric:
    """A fresh accumulator of metric `name` with `options` (SaeAmortError on unknown names or options)."""
    cls = get_metric(name)
    try:
        return cls(**options)
    except TypeError as err:
        raise SaeAmortError(f"metric {name!r}: {err}") from None
