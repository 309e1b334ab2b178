"""Device choice and mixed precision, in one place for profiling, evaluation and training."""
from __future__ import annotations

import contextlib

import torch

from .errors import ConfigError, DeviceError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str | None = None) -> torch.device:
    """`auto`/None: CUDA when present, else CPU. Asking for CUDA without one is an error, not a fallback."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: expected auto, cpu or cuda[:index], got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} requested, but this machine has no CUDA device "
                          "(torch.cuda.is_available() is False); use device=auto or cpu")
    return device


def default_dtype(device: torch.device) -> str:
    """bf16 autocast on CUDA (as the official models run); float32 on CPU, where bf16 matmuls are slow."""
    return "bfloat16" if device.type == "cuda" else "float32"


def autocast(device: torch.device, dtype: str):
    if dtype not in DTYPES:
        raise ConfigError(f"dtype: unknown value {dtype!r}; allowed: {sorted(DTYPES)}")
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])
