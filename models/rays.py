"""Per-pixel camera rays and the Plücker embedding, in the official convention (OpenCV c2w, pixel
intrinsics, pixel centres at +0.5, unit directions, no intrinsics rescaling).

Rays are computed channel-last, [..., h, w, 3]: normalizing a direction then reduces three adjacent
numbers, where channel-first it reduced across three image planes, which PyTorch's CPU reduction
kernel does some 25 times slower. The channel-first functions return permuted views of that memory.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch


def _full_precision(device: torch.device):
    """Ray geometry stays in the cameras' precision under autocast: bf16 directions beside float32
    origins would cost the embedding most of its bits (and torch.cross refuses mixed dtypes)."""
    if device.type in ("cuda", "cpu") and torch.is_autocast_enabled(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return nullcontext()


def _rays(c2w: torch.Tensor, fxfycxcy: torch.Tensor, height: int, width: int, moments: bool) -> torch.Tensor:
    """Unit ray directions through the pixel centres, channel-last [..., h, w, 3]; with `moments`
    the Plücker embedding (o x d, d), [..., h, w, 6]."""
    device, dtype = c2w.device, c2w.dtype
    fx, fy, cx, cy = (t[..., None] for t in fxfycxcy.unbind(-1))
    x = (torch.arange(width, device=device, dtype=dtype) + 0.5 - cx) / fx  # [..., w]
    y = (torch.arange(height, device=device, dtype=dtype) + 0.5 - cy) / fy  # [..., h]
    columns = c2w[..., :3, :3].transpose(-1, -2)  # [..., 3, 3]; row j is the rotation's column r_j
    if moments:
        origins = c2w[..., None, :3, 3].expand_as(columns)
        columns = torch.cat([torch.linalg.cross(origins, columns, dim=-1), columns], dim=-1)  # rows (o x r_j, r_j)
    # The world direction R (x, y, 1) = x r0 + y r1 + r2, and o x d likewise, is a per-column term
    # plus a per-row term: one broadcast addition writes every pixel, with no matrix product for
    # FLOP counters to count.
    rays = x[..., None, :, None] * columns[..., None, None, 0, :] + (
        y[..., :, None, None] * columns[..., None, None, 1, :] + columns[..., None, None, 2, :])
    return rays / torch.linalg.vector_norm(rays[..., -3:], dim=-1, keepdim=True)


def pixel_rays(c2w: torch.Tensor, fxfycxcy: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray origins and unit directions, channel-first: c2w [..., 4, 4], fxfycxcy [..., 4] ->
    (origin, direction), each [..., 3, height, width] in the world frame (views of channel-last
    memory; the origins an expanded view of the camera centres)."""
    with _full_precision(c2w.device):
        directions = _rays(c2w, fxfycxcy, height, width, moments=False)
    origins = c2w[..., None, None, :3, 3].expand_as(directions)
    return origins.movedim(-1, -3), directions.movedim(-1, -3)


def plucker(origins: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """6-channel Plücker embedding (o x d, d) from channel-first rays [..., 3, h, w]."""
    return torch.cat([torch.cross(origins, directions, dim=-3), directions], dim=-3)


def plucker_rays_last(c2w: torch.Tensor, fxfycxcy: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The Plücker embedding (o x d, d) channel-last: c2w [..., 4, 4], fxfycxcy [..., 4] -> [..., h, w, 6]."""
    with _full_precision(c2w.device):
        return _rays(c2w, fxfycxcy, height, width, moments=True)


def camera_frame_rays_last(fxfycxcy: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Unit ray directions in each view's own camera frame (from the intrinsics alone, so the same
    wherever the world's origin is): fxfycxcy [..., 4] -> [..., h, w, 3]."""
    with _full_precision(fxfycxcy.device):
        eye = torch.eye(4, dtype=fxfycxcy.dtype, device=fxfycxcy.device).expand(*fxfycxcy.shape[:-1], 4, 4)
        return _rays(eye, fxfycxcy.float(), height, width, moments=False)


def plucker_rays(c2w: torch.Tensor, fxfycxcy: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The Plücker embedding channel-first, [..., 6, h, w]: a permuted view of `plucker_rays_last`."""
    return plucker_rays_last(c2w, fxfycxcy, height, width).movedim(-1, -3)


def random_rigid_transform(seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A proper rigid transform [4, 4] (a rotation, determinant +1, and a translation) drawn from `seed`:
    moving every camera by it, T @ c2w, moves the world without changing what any camera sees."""
    g = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    transform = torch.eye(4, dtype=torch.float64)
    transform[:3, :3] = rotation * torch.sign(torch.linalg.det(rotation))
    transform[:3, 3] = torch.randn(3, generator=g, dtype=torch.float64)
    return transform.to(dtype)
