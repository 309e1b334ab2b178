"""Camera geometry shared by every source: LVSM's scene normalization, look-at cameras, OpenGL->OpenCV,
world-to-camera inversion (resizing and cropping, with the intrinsics, belong to `protocols`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def normalize_poses(c2w: torch.Tensor, scale: float = 1.35) -> torch.Tensor:
    """LVSM's scene normalization of OpenCV c2w [n,4,4]: express every camera in the frame of the
    average camera (mean centre; mean forward and down axes, re-orthogonalized), then divide the
    translations by `scale` * max |t|. Rotations are not rescaled."""
    c2w = c2w.to(torch.float32)
    center = c2w[:, :3, 3].mean(0)
    forward = F.normalize(c2w[:, :3, 2].mean(0), dim=0)
    down = c2w[:, :3, 1].mean(0)
    right = F.normalize(torch.linalg.cross(down, forward), dim=0)
    down = F.normalize(torch.linalg.cross(forward, right), dim=0)
    mean_c2w = torch.eye(4, dtype=c2w.dtype, device=c2w.device)
    mean_c2w[:3, :3] = torch.stack([right, down, forward], dim=1)
    mean_c2w[:3, 3] = center
    out = torch.linalg.inv(mean_c2w) @ c2w
    extent = out[:, :3, 3].abs().max()
    # A single camera (or identical ones) has zero extent; leave its translation at zero.
    out[:, :3, 3] = out[:, :3, 3] / (scale * extent) if extent > 0 else out[:, :3, 3]
    return out


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """OpenCV c2w [..., 4, 4] (x right, y down, z forward) for cameras at `eye` looking at `target`;
    `up` is the world up direction (the camera's -y points roughly along it)."""
    forward = F.normalize(target - eye, dim=-1)
    right = F.normalize(torch.linalg.cross(forward, up.expand_as(forward)), dim=-1)
    down = torch.linalg.cross(forward, right)
    c2w = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype)
    c2w[..., :3, 0], c2w[..., :3, 1], c2w[..., :3, 2], c2w[..., :3, 3] = right, down, forward, eye
    c2w[..., 3, 3] = 1
    return c2w


def opengl_to_opencv(c2w: torch.Tensor) -> torch.Tensor:
    """OpenGL/Blender camera axes (x right, y up, z backward) -> OpenCV (x right, y down, z forward)."""
    out = c2w.clone()
    out[..., :3, 1:3] *= -1
    return out


def singular_frames(matrices: torch.Tensor) -> list[int]:
    """Positions of the [..., 3 or 4, 4] camera matrices whose rotation part cannot be inverted (a zero
    or degenerate 3x3 block): inverting them fails, or yields Inf, for the whole batch."""
    det = torch.linalg.det(matrices[..., :3, :3].to(torch.float64)).reshape(-1)
    return (det.abs() < 1e-12).nonzero()[:, 0].tolist()


def w2c_to_c2w(w2c: torch.Tensor) -> torch.Tensor:
    """Invert [..., 3 or 4, 4] world-to-camera matrices (3x4 rows are completed with 0 0 0 1)."""
    if w2c.shape[-2] == 3:
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=w2c.dtype).expand(*w2c.shape[:-2], 1, 4)
        w2c = torch.cat([w2c, bottom], dim=-2)
    return torch.linalg.inv(w2c.to(torch.float64)).to(torch.float32)
