"""Patchify/unpatchify in the official (row-in-patch, col-in-patch, channel) order, the linear
tokenizers for input and target views, and the output head.

The view features are assembled channel-last and handed on as channel-first views: patchify's
copy then moves runs of p*C adjacent numbers instead of gathering every channel from its own plane."""
from __future__ import annotations

import torch
from torch import nn

from .layers import layer_norm
from .rays import camera_frame_rays_last, plucker_rays_last

INPUT_CHANNELS = 9  # 2*rgb-1, o x d, d
TARGET_CHANNELS = 6  # o x d, d
RGB_CHANNELS = 3
# With cameras inside attention alone (PRoPE, GTA), a token carries its pixels' directions in its own
# camera's frame, nothing that depends on where the world's origin is.
CAMERA_FRAME_INPUT_CHANNELS = 6  # 2*rgb-1, d in the camera frame
CAMERA_FRAME_TARGET_CHANNELS = 3


def raymaps(camera_encoding: str) -> bool:
    """Whether tokens carry Plücker raymaps (else directions in the camera frame)."""
    return camera_encoding in ("plucker", "plucker+prope")


def token_channels(camera_encoding: str) -> tuple[int, int]:
    """Channels per pixel of an input view's and a target view's token features."""
    if raymaps(camera_encoding):
        return INPUT_CHANNELS, TARGET_CHANNELS
    return CAMERA_FRAME_INPUT_CHANNELS, CAMERA_FRAME_TARGET_CHANNELS


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


def input_view_features(images: torch.Tensor, c2w: torch.Tensor, fxfycxcy: torch.Tensor, plucker: bool = True) -> torch.Tensor:
    """The 9-channel input-view signal [2*rgb-1, o x d, d]: [b, n, 9, h, w], a view of [b, n, h, w, 9];
    without `plucker`, [2*rgb-1, d in the camera frame] (6 channels)."""
    h, w = images.shape[-2:]
    rays = (plucker_rays_last(c2w.float(), fxfycxcy.float(), h, w) if plucker
            else camera_frame_rays_last(fxfycxcy, h, w)).to(images.dtype)
    pixels = torch.add(images.new_full((), -1.0), images.movedim(2, -1), alpha=2.0)  # 2*rgb-1 in one op, exactly
    return torch.cat([pixels, rays], dim=-1).movedim(-1, 2)


def target_view_features(c2w: torch.Tensor, fxfycxcy: torch.Tensor, height: int, width: int, plucker: bool = True) -> torch.Tensor:
    """The 6-channel target-view signal (Plücker rays only): [b, m, 6, h, w], a view of [b, m, h, w, 6];
    without `plucker`, the 3 directions in the camera frame."""
    rays = plucker_rays_last(c2w.float(), fxfycxcy.float(), height, width) if plucker else camera_frame_rays_last(fxfycxcy, height, width)
    return rays.movedim(-1, 2)


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
