"""Reconstruction loss: MSE, plus LPIPS when its weights can be loaded; the run records which one."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class LossInfo:
    name: str      # what the run actually optimizes, e.g. "mse" or "mse + 0.5*lpips(vgg)"
    note: str = ""  # why a requested perceptual term is absent


def load_perceptual(device: torch.device) -> tuple[nn.Module | None, str]:
    """LPIPS(vgg) with its pretrained backbone, frozen; or None and the reason it is unavailable.
    Loading (and the missing-file message) is `harness.metrics.LPIPSMetric`'s; the loss needs the
    differentiable network it wraps, not its no-grad per-image scores."""
    from ..metrics import LPIPSMetric
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric = LPIPSMetric("vgg", device=device)
    if not metric.available:
        return None, metric.message
    return metric.network, ""


class ReconstructionLoss(nn.Module):
    def __init__(self, perceptual_weight: float, device: torch.device):
        super().__init__()
        self.perceptual_weight = perceptual_weight
        self.perceptual = None
        self.info = LossInfo("mse")
        if perceptual_weight > 0:
            net, reason = load_perceptual(device)
            if net is None:
                self.info = LossInfo("mse", f"perceptual term requested (weight {perceptual_weight}) but dropped: {reason}")
                warnings.warn(self.info.note, stacklevel=2)
            else:
                self.perceptual = net
                self.info = LossInfo(f"mse + {perceptual_weight:g}*lpips(vgg)")

    def forward(self, render: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        render, target = render.float(), target.float()
        mse = F.mse_loss(render, target)
        parts = {"mse": mse.detach().item()}
        loss = mse
        if self.perceptual is not None:
            flat_r, flat_t = render.flatten(0, 1), target.flatten(0, 1)
            lp = self.perceptual(flat_r, flat_t, normalize=True).mean()
            parts["lpips"] = lp.detach().item()
            loss = loss + self.perceptual_weight * lp
        return loss, parts
