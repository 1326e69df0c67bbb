"""Device and dtype choices for the commands: validated once, with clear errors and the documented fallbacks.

- `--device auto | cpu | cuda | cuda:N | mps`: `auto` (every command's default) takes cuda, then mps, then cpu;
  CUDA or MPS requested where none is available (or N out of range) is a user error. On MPS (Apple Silicon) what
  Metal lacks runs on the CPU: the CLI sets PYTORCH_ENABLE_MPS_FALLBACK=1 before torch loads.
- `--llm-dtype` / `--sae-dtype`: fp32 | bf16 | fp16 (aliases float32, bfloat16, float16). Half precision on a CPU:
  bf16 falls back to fp32 with a warning where the CPU has no native bf16 matmul path worth using, fp16 always does
  (CPU fp16 matmuls are emulated). Objectives are accumulated in fp32 whatever the dtype (inference engine).
- `collect --dtype`: the storage dtype of an activation store, float32 | float16 | bfloat16 (`STORAGE_DTYPES`;
  `activations.shards` maps the names to torch dtypes).
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

from saelens_amort.errors import SaeAmortError

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16",
          "float16": "float16"}
"""Accepted dtype names → the torch dtype's name (torch loads only when a dtype is resolved)."""
STORAGE_DTYPES = ("float32", "float16", "bfloat16")
"""Dtypes an activation store may hold, as torch dtype names."""


def parse_device(device: str) -> str:
    """`device` unchanged if it names a device kind this package knows (auto, cpu, cuda, cuda:N, mps), else
    SaeAmortError. Torch-free, so a typo answers at once; `check_device` resolves it where it will be used."""
    index = device.partition(":")[2] if device.startswith("cuda:") else ""
    if device in ("auto", "cpu", "mps", "cuda") or (device.startswith("cuda:") and index.isdigit()):
        return device
    raise SaeAmortError(f"unknown --device {device!r}; use auto, cpu, cuda, cuda:N or mps")


def check_device(device: str) -> str:
    """The device to use for `device` (`auto` resolved), or SaeAmortError when it is unknown or not on this machine."""
    import torch

    parse_device(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if _has_mps() else "cpu"
    if device == "cpu":
        return device
    if device == "mps":
        if not _has_mps():
            raise SaeAmortError("--device mps requested but MPS (Apple Silicon GPU) is not available here; use "
                                "--device auto or cpu")
        return device
    if not torch.cuda.is_available():
        raise SaeAmortError(f"--device {device} requested but CUDA is not available here (torch "
                            f"{torch.__version__}); use --device cpu or a CUDA build of torch on a GPU machine")
    index = device.partition(":")[2]
    if index and int(index) >= torch.cuda.device_count():
        raise SaeAmortError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def parse_dtype(name: str | None, what: str) -> str | None:
    """`name` unchanged if it is None or an accepted dtype name, else SaeAmortError (torch-free)."""
    if name is not None and name not in DTYPES:
        raise SaeAmortError(f"unknown {what} {name!r}; use fp32, bf16 or fp16")
    return name


def parse_storage_dtype(name: str, what: str = "storage dtype") -> str:
    """`name` unchanged if it is one of STORAGE_DTYPES, else SaeAmortError (torch-free)."""
    if name not in STORAGE_DTYPES:
        raise SaeAmortError(f"unknown {what} {name!r}; use one of {', '.join(STORAGE_DTYPES)}")
    return name


def on_device(cfg: T) -> T:
    """`cfg` (a dataclass with a `device` field) with its device resolved by `check_device`: what a runner does
    first, so the command line only checks the spelling (`parse_device`) and torch loads once the options passed."""
    return replace(cfg, device=check_device(cfg.device))


def resolve_dtype(name: str | None, device: str, what: str) -> torch.dtype | None:
    """The torch dtype for `name` on `device` (None: keep the stored dtype)."""
    if name is None:
        return None
    parse_dtype(name, what)
    import torch

    dtype = getattr(torch, DTYPES[name])
    if device == "cpu" and dtype == torch.float16:
        warnings.warn(f"{what} fp16 on CPU is emulated and slow; using fp32", UserWarning, stacklevel=2)
        return torch.float32
    if device == "cpu" and dtype == torch.bfloat16 and not _cpu_has_bf16():
        warnings.warn(f"{what} bf16: this CPU has no native bf16 support; using fp32", UserWarning, stacklevel=2)
        return torch.float32
    return dtype


def _has_mps() -> bool:
    import torch

    return bool(torch.backends.mps.is_available())


def _cpu_has_bf16() -> bool:
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
