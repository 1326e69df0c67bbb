"""Metric families of `saeamort eval` (DESIGN §4), each a streaming, mergeable accumulator registered by name.

    m = make_metric("reconstruction"); m.update(MetricBatch(x, recon, codes)); m.compute()  →  {"nmse": …, "fvu": …}

Registered families: reconstruction (NMSE, FVU, MSE), sparsity (L0, dead / dense rates, firing frequencies),
probes (k-sparse probe F1@k, ΔF1), absorption, gap (amortization gap), cost (time, FLOPs per token), and splice
(spliced CE / KL; fed by `spliced_metrics`, which needs the model), and truth (recovered features, code MCC, true
absorption and splitting against a ground-truth world). Importing this package registers them.
"""

from saelens_amort.metrics.registry import (
    Metric,
    MetricBatch,
    check_batch,
    get_metric,
    list_metrics,
    make_metric,
    metric_batch,
    register_metric,
)

from saelens_amort.metrics import reconstruction, sparsity, probes, absorption, gap, cost, splice, truth  # noqa: E402,F401,I001

from saelens_amort.metrics.absorption import AbsorptionMetric  # noqa: E402
from saelens_amort.metrics.cost import FLOP_MODELS, CostMetric, flops_per_row  # noqa: E402
from saelens_amort.metrics.gap import GapMetric  # noqa: E402
from saelens_amort.metrics.probes import ProbeMetric  # noqa: E402
from saelens_amort.metrics.reconstruction import ReconstructionMetric  # noqa: E402
from saelens_amort.metrics.sparsity import SparsityMetric  # noqa: E402
from saelens_amort.metrics.truth import TruthMetric, match_latents  # noqa: E402
from saelens_amort.metrics.splice import (  # noqa: E402
    SpliceMetric,
    SpliceReference,
    SpliceResult,
    splice_reference,
    spliced_metrics,
)

__all__ = [
    "FLOP_MODELS",
    "AbsorptionMetric",
    "CostMetric",
    "GapMetric",
    "Metric",
    "MetricBatch",
    "ProbeMetric",
    "ReconstructionMetric",
    "SparsityMetric",
    "SpliceMetric",
    "SpliceReference",
    "SpliceResult",
    "TruthMetric",
    "check_batch",
    "flops_per_row",
    "get_metric",
    "list_metrics",
    "make_metric",
    "match_latents",
    "metric_batch",
    "register_metric",
    "splice_reference",
    "spliced_metrics",
]
