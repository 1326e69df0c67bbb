"""λ calibration: match the amortized density (mean L0 or dense rate) within 5 %, record it, fail loudly."""

import pytest
import torch
from helpers import random_dictionary, sae_dictionary, sparse_signals, torch_threads, toy_activations

import saelens_amort
from saelens_amort.errors import SaeAmortError
from saelens_amort.inference import calibrate_lambda, infer
from saelens_amort.inference.calibrate import dense_rate, mean_l0


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def toy():
    sae = saelens_amort.load_sae("toy/standard")
    return sae_dictionary(sae), toy_activations(sae.cfg.metadata.hook_name)[:512]


@pytest.mark.parametrize("mode", ["unamortized", "semi"])
def test_l0_target_is_the_amortized_l0_within_5_percent(toy, mode):
    d, x = toy
    cal = calibrate_lambda(x, d, mode)
    amortized_l0 = mean_l0(infer(x, d, "amortized").codes)
    assert cal.target == "l0" and cal.target_value == pytest.approx(amortized_l0)
    assert abs(cal.achieved - amortized_l0) <= 0.05 * amortized_l0
    assert 1 <= cal.n_evals <= 30 and cal.lam > 0
    # The calibrated λ reproduces the density when the mode runs again.
    again = infer(x, d, mode, lam=cal.lam)
    assert mean_l0(again.codes) == pytest.approx(cal.achieved, rel=0.02)


def test_refit_is_calibrated_on_the_refitted_codes(toy):
    d, x = toy[0], toy[1][:128]  # refits of semi's wide supports at small λ are the slow part
    plain, refit = calibrate_lambda(x, d, "semi"), calibrate_lambda(x, d, "semi", refit=True)
    amortized_l0 = mean_l0(infer(x, d, "amortized").codes)
    assert abs(refit.achieved - amortized_l0) <= 0.05 * amortized_l0 and refit.lam < plain.lam
    assert mean_l0(infer(x, d, "semi", lam=refit.lam, refit=True).codes) == pytest.approx(refit.achieved, rel=0.02)
    assert mean_l0(infer(x, d, "semi", lam=plain.lam, refit=True).codes) < 0.9 * amortized_l0  # NNLS drops atoms


def test_infer_without_lambda_calibrates_and_records(toy):
    d, x = toy
    res = infer(x[:256], d, "unamortized")
    cal = res.info["calibration"]
    assert res.lam == cal["lam"] and cal["target"] == "l0"
    assert abs(cal["achieved"] - cal["target_value"]) <= 0.05 * cal["target_value"]
    assert abs(mean_l0(res.codes) - cal["target_value"]) <= 0.05 * cal["target_value"]
    assert (res.codes >= 0).all() and torch.isfinite(res.objective).all()
    # Modes without λ are not calibrated.
    assert "calibration" not in infer(x[:16], d, "amortized").info


def test_dense_target_matches_the_amortized_dense_rate(toy):
    d, x = toy
    cal = calibrate_lambda(x, d, "unamortized", target="dense@0.1")
    amortized_rate = dense_rate(infer(x, d, "amortized").codes, 0.1)
    assert cal.target_value == pytest.approx(amortized_rate)
    assert abs(cal.achieved - amortized_rate) <= 0.05 * amortized_rate


def test_explicit_l0_target_on_a_bare_dictionary():
    d = random_dictionary(64, 256, seed=11)
    x = sparse_signals(d, 64, l0=6, seed=11)
    cal = calibrate_lambda(x, d, target=10.0)
    assert abs(cal.achieved - 10.0) <= 0.5
    with pytest.raises(SaeAmortError, match="needs the SAE"):
        calibrate_lambda(x, d)  # target='l0' needs the amortized codes
    with pytest.raises(SaeAmortError, match="needs the SAE"):
        infer(x, d, "unamortized")


def test_calibration_failures_say_what_was_reached():
    d = random_dictionary(32, 128, seed=12)
    x = sparse_signals(d, 16, l0=4, seed=12)
    with pytest.raises(SaeAmortError, match="could not bracket .* reached"):
        calibrate_lambda(x, d, target=128.0, max_evals=4)  # every latent on every row: out of reach
    with pytest.warns(UserWarning, match="using the closest λ"):
        closest = calibrate_lambda(x, d, target=128.0, max_evals=4, strict=False)
    assert 0 < closest.achieved < 128.0 and closest.lam > 0
    with pytest.raises(SaeAmortError, match="takes no λ"):
        calibrate_lambda(x, d, "amortized", target=4.0)
    for bad in ("dense@2", "l1", 0.0, 1000.0):
        with pytest.raises(SaeAmortError, match="target"):
            calibrate_lambda(x, d, target=bad)


def test_calibration_measures_every_row_it_is_given():
    sae = saelens_amort.load_sae("toy/standard")
    x = toy_activations(sae.cfg.metadata.hook_name, n_docs=48)[:3000]  # more than infer's 2048-row slice
    with torch.no_grad():
        l0_all, l0_head = mean_l0(sae.encode(x)), mean_l0(sae.encode(x[:2048]))
    assert abs(l0_all - l0_head) > 0.1  # the rows past 2048 change the target
    cal = calibrate_lambda(x, sae, "semi", steps=2)
    assert cal.target_value == pytest.approx(l0_all, rel=1e-6) and cal.n_rows == 3000
    assert abs(cal.achieved - l0_all) <= 0.05 * l0_all
    # The target may come from amortized codes the caller already has (the batches its amortized mode saw).
    ref = torch.zeros(64, sae.cfg.d_sae)
    ref[:, :5] = 1.0
    cal = calibrate_lambda(x[:64], sae, "unamortized", reference=ref)
    assert cal.target_value == 5.0 and abs(cal.achieved - 5.0) <= 0.25
    with pytest.raises(SaeAmortError, match="reference codes have shape"):
        calibrate_lambda(x[:64], sae, "unamortized", reference=ref[:10])


def test_strict_calibration_raises_when_no_lambda_reaches_the_target():
    d = random_dictionary(32, 128, seed=12)
    x = sparse_signals(d, 16, l0=4, seed=12)
    # Just below λ_max one row keeps one latent (mean L0 1/16); nothing between that and 0 is within 5 % of 0.01.
    with pytest.raises(SaeAmortError, match="no λ reaches the density target 0.01.*strict=False"):
        calibrate_lambda(x, d, target=0.01)
    with pytest.warns(UserWarning, match="no λ reaches .* using the closest λ"):
        closest = calibrate_lambda(x, d, target=0.01, strict=False)
    assert closest.achieved == 0.0 and closest.n_rows == 16  # λ_max's all-zero codes are closer than 1/16


def test_the_search_runs_on_a_row_subset_first_then_confirms_on_all_rows():
    from saelens_amort.inference import calibrate as cal_module
    from saelens_amort.inference.registry import _MODES, get_mode, register_mode

    sae = saelens_amort.load_sae("toy/topk")
    x = toy_activations(sae.cfg.metadata.hook_name)[:1024]
    sizes: list[int] = []
    inner = get_mode("unamortized").fn

    def counted(x, dictionary, options):
        sizes.append(x.shape[0])
        return inner(x, dictionary, options)

    register_mode("counted_unamortized", counted, needs_lambda=True)
    try:
        _check_subset_then_all(x, sae, sizes, cal_module.COARSE_STRIDE)
    finally:
        _MODES.pop("counted_unamortized")


def _check_subset_then_all(x, sae, sizes, stride):
    cal = calibrate_lambda(x, sae, "counted_unamortized")
    full = [n for n in sizes if n == 1024]
    assert abs(cal.achieved - cal.target_value) <= 0.05 * cal.target_value and cal.n_rows == 1024
    assert set(sizes) == {1024, 1024 // stride}
    assert 1 <= len(full) <= 2 < len(sizes) == cal.n_evals  # the wide bracketing ran on the subset only
    sizes.clear()
    small = calibrate_lambda(x[:256], sae, "counted_unamortized")  # too few rows for a subset: all rows throughout
    assert set(sizes) == {256} and abs(small.achieved - small.target_value) <= 0.05 * small.target_value


def test_a_mean_l0_search_starts_on_the_sparse_cheap_side():
    """The first solve runs at or below the target density (the correlation guess) and none far above it, where
    solves are slow; bracketing down from λ_max / 3 by factors of 3 overshoots this problem to 1.6× the target."""
    from saelens_amort.inference.registry import _MODES, get_mode, register_mode

    d = random_dictionary(d_in=64, d_sae=1024, seed=21)
    x = sparse_signals(d, 1024, l0=24, noise=0.05, seed=22)
    densities: list[float] = []
    inner = get_mode("unamortized").fn

    def counted(x, dictionary, options):
        out = inner(x, dictionary, options)
        densities.append(mean_l0(out.codes))
        return out

    register_mode("counted_unamortized", counted, needs_lambda=True)
    try:
        cal = calibrate_lambda(x, d, "counted_unamortized", target=24.0)
    finally:
        _MODES.pop("counted_unamortized")
    assert abs(cal.achieved - 24.0) <= 0.05 * 24.0
    assert densities[0] <= 24.0 * 1.05 and max(densities) <= 24.0 * 1.5
