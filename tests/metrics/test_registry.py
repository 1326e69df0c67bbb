"""The metric registry and MetricBatch validation."""

import pytest
import torch

from saelens_amort.errors import SaeAmortError
from saelens_amort.metrics import (
    Metric,
    MetricBatch,
    ReconstructionMetric,
    get_metric,
    list_metrics,
    make_metric,
    register_metric,
)

FAMILIES = ["reconstruction", "sparsity", "probes", "absorption", "gap", "cost", "splice"]


def test_every_family_is_registered():
    assert set(FAMILIES) <= set(list_metrics())
    for name in FAMILIES:
        assert get_metric(name).name == name


def test_unknown_metric_lists_the_registered_ones():
    with pytest.raises(SaeAmortError, match="unknown metric 'nmsee'.*reconstruction.*sparsity") as err:
        make_metric("nmsee")
    assert "\n" not in str(err.value)


def test_registration_is_idempotent_and_checked():
    before = list_metrics()
    register_metric("reconstruction", ReconstructionMetric)
    register_metric("reconstruction", ReconstructionMetric)
    assert list_metrics() == before
    with pytest.raises(SaeAmortError, match="Metric subclass"):
        register_metric("bad", dict)  # type: ignore[arg-type]
    with pytest.raises(SaeAmortError, match="non-empty"):
        register_metric("", ReconstructionMetric)


def test_custom_metric_registers():
    class RowCount(Metric):
        name = "row_count_test"

        def __init__(self):
            super().__init__()
            self.n = 0

        def update(self, batch):
            self.n += batch.n_rows

        def merge(self, other):
            self._check_mergeable(other)
            self.n += other.n
            return self

        def compute(self):
            return self._result({"rows": self.n}, {})

    register_metric(RowCount.name, RowCount)
    m = make_metric("row_count_test")
    m.update(MetricBatch(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 4)))
    assert m.compute() == {"rows": 3.0}


def test_bad_options_and_merges_raise_one_line_errors():
    with pytest.raises(SaeAmortError, match="metric 'sparsity'"):
        make_metric("sparsity", no_such_option=1)
    with pytest.raises(SaeAmortError, match="cannot merge"):
        make_metric("sparsity").merge(make_metric("reconstruction"))
    with pytest.raises(SaeAmortError, match="different options"):
        make_metric("sparsity").merge(make_metric("sparsity", dense_thresholds=(0.5,)))


def test_batch_shapes_are_checked():
    m = make_metric("reconstruction")
    with pytest.raises(SaeAmortError, match="recon has shape"):
        m.update(MetricBatch(torch.zeros(3, 2), torch.zeros(3, 3), torch.zeros(3, 4)))
    with pytest.raises(SaeAmortError, match="codes has 2 rows"):
        m.update(MetricBatch(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(2, 4)))
    with pytest.raises(SaeAmortError, match="labels must have one entry per row"):
        m.update(MetricBatch(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 4), labels=torch.zeros(4)))
    with pytest.raises(SaeAmortError, match="2-D"):
        m.update(MetricBatch(torch.zeros(3), torch.zeros(3), torch.zeros(3, 4)))


def test_splice_metric_refuses_a_metric_batch():
    with pytest.raises(SaeAmortError, match="SpliceResult"):
        make_metric("splice").update(MetricBatch(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 4)))
