"""Camera geometry shared by every source: LVSM's scene normalization, look-at cameras, OpenGL->OpenCV,
and the single place where resizing/cropping adjusts pixel intrinsics."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


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


def resize_lanczos(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[v,3,H,W] in [0,1] -> [v,3,height,width]: PIL's LANCZOS on 8-bit images, as pixelSplat's
    evaluation and LVSM's loader resize (any other filter gives other pixels, so scores against
    published ones would differ for a reason unrelated to the model). Images decoded from 8-bit
    files pass through uint8 unchanged."""
    out = []
    for image in images:
        array = (image.detach().permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        resized = Image.fromarray(array).resize((width, height), Image.LANCZOS)
        out.append(torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(out).to(images.device)


def resize_center_crop(images: torch.Tensor, fxfycxcy: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize [v,3,H,W] images (LANCZOS, see `resize_lanczos`) so the shorter side (the height, for
    landscape frames as in RE10K) is `size`, then centre-crop to size x size; the pixel intrinsics
    follow. Pixel centres sit at +0.5, so the continuous image coordinate scales exactly by the resize
    factor and shifts by the crop."""
    h, w = images.shape[-2:]
    factor = size / min(h, w)
    new_h, new_w = max(size, round(h * factor)), max(size, round(w * factor))
    k = fxfycxcy.to(torch.float32).clone()
    if (new_h, new_w) != (h, w):
        images = resize_lanczos(images, new_h, new_w)
        k[..., 0::2] *= new_w / w
        k[..., 1::2] *= new_h / h
    top, left = (new_h - size) // 2, (new_w - size) // 2
    k[..., 2] -= left
    k[..., 3] -= top
    return images[..., top:top + size, left:left + size].contiguous(), k
