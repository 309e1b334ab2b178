"""Synthetic views for cost measurements: a forward pass costs the same whatever the pixels and
cameras hold, so plain random images and simple cameras are enough (and need no dataset)."""
from __future__ import annotations

import torch

Views = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def cameras(batch: int, views: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV camera-to-world matrices (identity rotations, scattered centres) and pixel intrinsics."""
    c2w = torch.eye(4).repeat(batch, views, 1, 1)
    c2w[..., :3, 3] = 0.5 * torch.randn(batch, views, 3, generator=generator)
    fxfycxcy = torch.tensor([float(size), float(size), size / 2, size / 2]).repeat(batch, views, 1)
    return c2w, fxfycxcy


def input_views(batch: int, views: int, size: int, device: torch.device | str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, views, 3, size, size, generator=g)
    c2w, k = cameras(batch, views, size, g)
    return images.to(device), c2w.to(device), k.to(device)


def target_views(batch: int, views: int, size: int, device: torch.device | str, seed: int = 1):
    c2w, k = cameras(batch, views, size, torch.Generator().manual_seed(seed))
    return c2w.to(device), k.to(device)


def synthetic_views(batch: int, n_input: int, n_target: int, size: int, device: torch.device | str, seed: int = 0) -> Views:
    """The five tensors of the call contract, on `device` (`meta` works too)."""
    if torch.device(device).type == "meta":  # shapes only: skip generating values that are dropped
        b, n, m = batch, n_input, n_target
        return tuple(torch.empty(*shape, device="meta") for shape in
                     [(b, n, 3, size, size), (b, n, 4, 4), (b, n, 4), (b, m, 4, 4), (b, m, 4)])
    return (*input_views(batch, n_input, size, device, seed), *target_views(batch, n_target, size, device, seed + 1))
