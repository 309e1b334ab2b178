"""Frozen vision encoders REPA can align with (`train.repa.teacher: harness.train.teachers:dino_vit_b16`).

A plain ViT whose parameter names are those of DINO's released checkpoints
(`dino_vitbase16_pretrain.pth`: cls_token, pos_embed, patch_embed.proj, blocks.i.{norm1, attn.qkv,
attn.proj, norm2, mlp.fc1, mlp.fc2}, norm), so such a state dict loads strictly. Nothing is downloaded:
the weights file is given by path (REPA_TEACHER_WEIGHTS in experiments/ablations.yaml). The forward takes
images in [0, 1], normalises them with ImageNet statistics, resizes to the patch grid it is given, and
returns the final-norm patch tokens [B, T, C] (class token dropped), as REPA aligns them.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, d))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, mlp_ratio * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTTeacher(nn.Module):
    """ViT with a class token and learned position embeddings (interpolated to other grids)."""

    def __init__(self, patch: int = 16, dim: int = 768, depth: int = 12, heads: int = 12, mlp_ratio: int = 4,
                 pretrain_size: int = 224, image_size: int = 224):
        super().__init__()
        self.patch, self.image_size = patch, image_size
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (pretrain_size // patch) ** 2, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def position_embedding(self, rows: int, cols: int) -> torch.Tensor:
        cls, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        side = int(grid.shape[1] ** 0.5)
        if (rows, cols) != (side, side):
            grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).flatten(1, 2)
        return torch.cat([cls, grid], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [0, 1] -> patch tokens [B, T, dim] at `image_size` resolution."""
        x = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                          antialias=True)
        x = self.patch_embed((x - self.mean) / self.std)
        rows = cols = self.image_size // self.patch
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.position_embedding(rows, cols)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 1:]


def dino_vit_b16() -> ViTTeacher:
    """DINO ViT-B/16 (86M parameters; load `dino_vitbase16_pretrain.pth`)."""
    return ViTTeacher(patch=16, dim=768, depth=12, heads=12)


def dino_vit_s16() -> ViTTeacher:
    """DINO ViT-S/16 (22M parameters; load `dino_deitsmall16_pretrain.pth`): cheaper on a CPU."""
    return ViTTeacher(patch=16, dim=384, depth=12, heads=6)
