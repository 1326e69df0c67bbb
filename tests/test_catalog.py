"""The torch-free catalog `saeamort modes` prints matches what the built-in modes register."""

from saelens_amort.inference import get_mode, list_modes
from saelens_amort.catalog import BUILTIN_MODES


def test_catalog_matches_the_registry():
    builtin = [m for m in list_modes() if get_mode(m).fn.__module__.startswith("saelens_amort.")]  # not tests' modes
    assert [m.name for m in BUILTIN_MODES] == builtin  # every built-in mode, none missing
    for m in BUILTIN_MODES:
        spec = get_mode(m.name)
        assert (m.needs_lambda, m.needs_k, m.needs_sae) == (spec.needs_lambda, spec.needs_k, spec.needs_sae), m.name
        assert m.summary


def test_metric_catalog_matches_the_registry():
    from saelens_amort.catalog import BUILTIN_METRICS
    from saelens_amort.metrics import get_metric, list_metrics

    assert list(BUILTIN_METRICS) == [m for m in list_metrics() if get_metric(m).__module__.startswith("saelens_amort.")]
