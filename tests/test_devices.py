"""Devices and dtypes: clear errors for CUDA that is not there, the documented CPU fallbacks, and half-precision SAEs
solved with fp32 objectives in every mode."""

import pytest
import torch
from helpers import toy_activations

from saelens_amort import SaeAmortError, infer
from saelens_amort.devices import check_device, on_device, parse_device, resolve_dtype
from saelens_amort.saes import load_sae


def test_device_and_dtype_choices():
    assert check_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(SaeAmortError, match="CUDA is not available"):
            check_device("cuda:0")
    with pytest.raises(SaeAmortError, match="unknown --device"):
        check_device("tpu")
    with pytest.raises(SaeAmortError, match="unknown --device"):
        check_device("cudax")
    assert resolve_dtype(None, "cpu", "--sae-dtype") is None
    assert resolve_dtype("fp32", "cpu", "--sae-dtype") == torch.float32
    with pytest.warns(UserWarning, match="fp16 on CPU"):
        assert resolve_dtype("fp16", "cpu", "--llm-dtype") == torch.float32
    assert resolve_dtype("bf16", "cpu", "--sae-dtype") in (torch.bfloat16, torch.float32)
    with pytest.raises(SaeAmortError, match="use fp32, bf16 or fp16"):
        resolve_dtype("int8", "cpu", "--sae-dtype")


def test_auto_takes_cuda_then_mps_then_cpu():
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert check_device("auto") == expected
    if torch.backends.mps.is_available():
        assert check_device("mps") == "mps"
    else:
        with pytest.raises(SaeAmortError, match="MPS .*not available"):
            check_device("mps")


def test_the_command_line_checks_spelling_and_the_runner_resolves():
    for ok in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert parse_device(ok) == ok  # spelling only: whether it exists is the runner's question
    for bad in ("tpu", "cudax", "cuda:", "cuda:x", "cuda:-1", ""):
        with pytest.raises(SaeAmortError, match="unknown --device"):
            parse_device(bad)
    from saelens_amort.runners.eval_config import EvalConfig

    cfg = EvalConfig(model="toy", device="auto")
    assert cfg.device == "auto" and on_device(cfg).device == check_device("auto")
    with pytest.raises(SaeAmortError, match="unknown --device"):
        EvalConfig(model="toy", device="gpu")


@pytest.mark.parametrize("mode", ["amortized", "semi", "unamortized", "omp"])
def test_bf16_sae_every_mode(mode):
    sae = load_sae("toy/topk", dtype=torch.bfloat16)
    x = toy_activations()[:256]
    kw = {"k": 8, "lam": 4.0} if mode == "omp" else {"lam": 4.0}  # λ defines the objective in every mode
    res = infer(x, sae, mode, **kw)
    assert res.objective.dtype == torch.float32 and torch.isfinite(res.objective).all()
    assert res.codes.shape == (256, sae.cfg.d_sae) and (res.codes >= 0).all()
