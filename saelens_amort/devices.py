"""Device and dtype choices for the commands: validated once, with clear errors and the documented fallbacks.

- `--device auto | cpu | cuda | cuda:N | mps`: `auto` (every command's default) takes cuda, then mps, then cpu;
  CUDA or MPS requested where none is available (or N out of range) is a user error. On MPS (Apple Silicon) what
  Metal lacks runs on the CPU: the CLI sets PYTORCH_ENABLE_MPS_FALLBACK=1 before torch loads.
- `--llm-dtype` / `--sae-dtype`: fp32 | bf16 | fp16 (aliases float32, bfloat16, float16). Half precision on a CPU:
  bf16 falls back to fp32 with a warning where the CPU has no native bf16 matmul path worth using, fp16 always does
  (CPU fp16 matmuls are emulated). Objectives are accumulated in fp32 whatever the dtype (inference engine).
"""

from __future__ import annotations

import warnings

import torch

from saelens_amort.errors import SaeAmortError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def check_device(device: str) -> str:
    """The device to use for `device` (`auto` resolved), or SaeAmortError when it is unknown or not on this machine."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if _has_mps() else "cpu"
    if device == "cpu":
        return device
    if device == "mps":
        if not _has_mps():
            raise SaeAmortError("--device mps requested but MPS (Apple Silicon GPU) is not available here; use "
                                "--device auto or cpu")
        return device
    if device != "cuda" and not device.startswith("cuda:"):
        raise SaeAmortError(f"unknown --device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    if not torch.cuda.is_available():
        raise SaeAmortError(f"--device {device} requested but CUDA is not available here (torch "
                            f"{torch.__version__}); use --device cpu or a CUDA build of torch on a GPU machine")
    index = device.partition(":")[2]
    if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
        raise SaeAmortError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def resolve_dtype(name: str | None, device: str, what: str) -> torch.dtype | None:
    """The torch dtype for `name` on `device` (None: keep the stored dtype)."""
    if name is None:
        return None
    if name not in DTYPES:
        raise SaeAmortError(f"unknown {what} {name!r}; use fp32, bf16 or fp16")
    dtype = DTYPES[name]
    if device == "cpu" and dtype == torch.float16:
        warnings.warn(f"{what} fp16 on CPU is emulated and slow; using fp32", UserWarning, stacklevel=2)
        return torch.float32
    if device == "cpu" and dtype == torch.bfloat16 and not _cpu_has_bf16():
        warnings.warn(f"{what} bf16: this CPU has no native bf16 support; using fp32", UserWarning, stacklevel=2)
        return torch.float32
    return dtype


def _has_mps() -> bool:
    return bool(torch.backends.mps.is_available())


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
