"""AdamW with nanoGPT-style parameter groups and a warm-up-then-cosine/constant schedule."""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import OptimSpec


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Matrices decay; 1-D parameters (norm weights, biases, RMSNorm scales) do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, spec: OptimSpec, device: torch.device) -> torch.optim.AdamW:
    # The fused kernel exists only on CUDA; elsewhere the default (foreach) path is deterministic.
    fused = device.type == "cuda"
    return torch.optim.AdamW(parameter_groups(model, spec.weight_decay), lr=spec.lr, betas=tuple(spec.betas),
                             fused=fused or None)


def lr_factor(step: int, spec: OptimSpec, total_steps: int) -> float:
    """Multiplier on the base learning rate for optimizer step `step` (0-based)."""
    if spec.warmup_steps and step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    if spec.schedule == "constant":
        return 1.0
    span = max(1, total_steps - spec.warmup_steps)
    progress = min(1.0, (step - spec.warmup_steps) / span)
    return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, spec: OptimSpec, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, spec, total_steps))
