"""The eval's λ: calibrated on the encoder's codes as the eval's amortized mode computes them (batch by batch), on
every calibration row asked for; a dense-rate target without a dense latent falls back to the mean L0, saying so."""

import pytest
import torch
from helpers import batch_topk_training_sae, torch_threads, toy_activations

import saelens_amort
from saelens_amort.inference import infer
from saelens_amort.inference.calibrate import dense_rate, mean_l0
from saelens_amort.runners.eval_lambda import calibrate_eval_lambda, calibration_rows_to_load


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def test_target_comes_from_the_eval_batches_of_a_batch_dependent_encoder():
    sae = batch_topk_training_sae()
    x = toy_activations(sae.cfg.metadata.hook_name)[:1024]
    assert calibration_rows_to_load(700, 512, 1536) == 1024 and calibration_rows_to_load(700, 512, 800) == 800
    with torch.no_grad():
        as_evaluated = torch.cat([sae.encode(x[:512]), sae.encode(x[512:1024])])[:700]
        alone = sae.encode(x[:700])
    assert mean_l0(as_evaluated) != pytest.approx(mean_l0(alone), abs=1e-3)
    found = calibrate_eval_lambda(x, sae, "l0", 700, 512)
    cal = found.calibration
    assert found.target == "l0" and found.note is None and cal.n_rows == 700
    assert cal.target_value == pytest.approx(mean_l0(as_evaluated), rel=1e-6)
    assert abs(cal.achieved - cal.target_value) <= 0.05 * cal.target_value


def _without_dense_latents(x):
    """toy/standard with every latent that fires on ≥ 5 % of x switched off (encoder bias −1e4)."""
    sae = saelens_amort.load_sae("toy/standard")
    with torch.no_grad():
        frequent = (sae.encode(x) > 0).float().mean(dim=0) >= 0.05
        sae.b_enc[frequent] = -1e4
        assert dense_rate(sae.encode(x), 0.1) == 0 and frequent.any()
    return sae


def test_dense_target_without_a_dense_latent_falls_back_to_l0_and_says_so():
    x = toy_activations()[:128]
    sae = _without_dense_latents(x)
    found = calibrate_eval_lambda(x, sae, "dense@0.1", 128, 64)
    assert found.target == "l0" and "no amortized latent fires on ≥ 0.1 of the 128 calibration rows" in found.note
    l0 = mean_l0(infer(x, sae, "amortized").codes)
    assert found.calibration.target == "l0" and found.calibration.target_value == pytest.approx(l0, rel=1e-6)
