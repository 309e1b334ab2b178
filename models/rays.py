"""Per-pixel camera rays and the Plücker embedding, in the official convention (OpenCV c2w, pixel
intrinsics, pixel centres at +0.5, unit directions, no intrinsics rescaling)."""
from __future__ import annotations

import torch


def pixel_rays(c2w: torch.Tensor, fxfycxcy: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray origins and unit directions, channel-first: c2w [..., 4, 4], fxfycxcy [..., 4] ->
    (origin, direction), each [..., 3, height, width] in the world frame."""
    device, dtype = c2w.device, c2w.dtype
    v, u = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype) + 0.5,
        torch.arange(width, device=device, dtype=dtype) + 0.5,
        indexing="ij",
    )
    fx, fy, cx, cy = (fxfycxcy[..., i, None, None] for i in range(4))
    cam_dirs = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u).expand_as(u - cx)], dim=-3)
    rotation = c2w[..., :3, :3]
    world_dirs = torch.einsum("...ij,...jhw->...ihw", rotation, cam_dirs)
    world_dirs = world_dirs / world_dirs.norm(dim=-3, keepdim=True)
    origins = c2w[..., :3, 3, None, None].expand_as(world_dirs)
    return origins, world_dirs


def plucker(origins: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """6-channel Plücker embedding (o x d, d) from channel-first rays [..., 3, h, w]."""
    return torch.cat([torch.cross(origins, directions, dim=-3), directions], dim=-3)


def plucker_rays(c2w: torch.Tensor, fxfycxcy: torch.Tensor, height: int, width: int) -> torch.Tensor:
    # Ray geometry stays in the cameras' precision: under bf16 autocast the einsum would return
    # bf16 directions beside float32 origins, and torch.cross refuses mixed dtypes.
    if c2w.device.type in ("cuda", "cpu") and torch.is_autocast_enabled(c2w.device.type):
        with torch.autocast(device_type=c2w.device.type, enabled=False):
            return plucker(*pixel_rays(c2w, fxfycxcy, height, width))
    return plucker(*pixel_rays(c2w, fxfycxcy, height, width))
