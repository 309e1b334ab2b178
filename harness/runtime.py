"""Device choice and mixed precision, in one place for profiling, evaluation and training."""
from __future__ import annotations

import contextlib

import torch

from .distributed import rank_device
from .errors import ConfigError, DeviceError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str | None = None) -> torch.device:
    """`auto`/None: CUDA when present, else CPU. Asking for CUDA without one is an error, not a fallback.
    Under torchrun, CUDA is the GPU of this process's local rank."""
    if name in (None, "auto"):
        return rank_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: expected auto, cpu or cuda[:index], got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} requested, but this machine has no CUDA device "
                          "(torch.cuda.is_available() is False); use device=auto or cpu")
    return rank_device(device)


# The one preset rule. `auto`: the paper preset where the models run at their published size (CUDA) or
# are only counted (the meta device: shapes, no compute); `small` on a CPU, where the paper preset is
# out of reach.
AUTO_PRESET = {"cuda": "paper", "meta": "paper", "cpu": "small"}


def resolve_preset(preset: str, device: str | torch.device | None = None) -> str:
    """`preset` itself, or for `auto` the preset of the device the models run on (`device` as in
    `resolve_device`, or "meta")."""
    if preset != "auto":
        return preset
    device_type = "meta" if str(device) == "meta" else resolve_device(None if device is None else str(device)).type
    return AUTO_PRESET.get(device_type, "small")


def default_dtype(device: torch.device) -> str:
    """bf16 autocast on CUDA (as the official models run); float32 on CPU, where bf16 matmuls are slow."""
    return "bfloat16" if device.type == "cuda" else "float32"


def autocast(device: torch.device, dtype: str):
    if dtype not in DTYPES:
        raise ConfigError(f"dtype: unknown value {dtype!r}; allowed: {sorted(DTYPES)}")
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])
