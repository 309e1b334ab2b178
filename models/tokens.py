"""Patchify/unpatchify in the official (row-in-patch, col-in-patch, channel) order, the linear
tokenizers for input and target views, and the output head.

The view features are assembled channel-last and handed on as channel-first views: patchify's
copy then moves runs of p*C adjacent numbers instead of gathering every channel from its own plane."""
from __future__ import annotations

import torch
from torch import nn

from .layers import layer_norm
from .rays import plucker_rays_last

INPUT_CHANNELS = 9  # 2*rgb-1, o x d, d
TARGET_CHANNELS = 6  # o x d, d
RGB_CHANNELS = 3


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/p)(W/p), p*p*C]; patches in raster order, channel fastest within one."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(tokens: torch.Tensor, patch: int, height: int, width: int) -> torch.Tensor:
    """Inverse of `patchify`: [B, P, p*p*C] -> [B, C, H, W]."""
    b, _, size = tokens.shape
    c = size // (patch * patch)
    x = tokens.reshape(b, height // patch, width // patch, patch, patch, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, height, width)


class Tokenizer(nn.Module):
    """Linear patch embedding without bias, C*p*p -> dim."""

    def __init__(self, channels: int, patch: int, dim: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Linear(channels * patch * patch, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, V, C, H, W] -> [B*V, P, dim]."""
        return self.proj(patchify(x.flatten(0, 1), self.patch))


def input_view_features(images: torch.Tensor, c2w: torch.Tensor, fxfycxcy: torch.Tensor) -> torch.Tensor:
    """The 9-channel input-view signal [2*rgb-1, o x d, d]: [b, n, 9, h, w], a view of [b, n, h, w, 9]."""
    h, w = images.shape[-2:]
    rays = plucker_rays_last(c2w.float(), fxfycxcy.float(), h, w).to(images.dtype)
    pixels = torch.add(images.new_full((), -1.0), images.movedim(2, -1), alpha=2.0)  # 2*rgb-1 in one op, exactly
    return torch.cat([pixels, rays], dim=-1).movedim(-1, 2)


def target_view_features(c2w: torch.Tensor, fxfycxcy: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The 6-channel target-view signal (Plücker rays only): [b, m, 6, h, w], a view of [b, m, h, w, 6]."""
    return plucker_rays_last(c2w.float(), fxfycxcy.float(), height, width).movedim(-1, 2)


class RenderHead(nn.Module):
    """LayerNorm -> Linear(dim -> 3p^2, no bias) -> sigmoid -> unpatchify."""

    def __init__(self, dim: int, patch: int, norm_affine: bool):
        super().__init__()
        self.patch = patch
        self.norm = layer_norm(dim, norm_affine)
        self.proj = nn.Linear(dim, RGB_CHANNELS * patch * patch, bias=False)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """[B, P, dim] -> [B, 3, H, W] in (0, 1)."""
        rgb = torch.sigmoid(self.proj(self.norm(tokens)).float())
        return unpatchify(rgb, self.patch, height, width)
