"""Evaluation protocols: how a frame of any size becomes the square-ish image a model is scored on,
with its pixel intrinsics. Published tables differ in this step, and a one-pixel change of width
or crop offset moves every pixel, so each protocol follows one family's code exactly and every
table names the one it used.

- `lvsm` (LVSM and Efficient-LVSM, `data/dataset_scene.py`): the height goes to the model's size,
  the width to `int(size / h * w)` rounded to a multiple of the patch size; PIL LANCZOS; a square
  centre crop of side min(height, width); fx and cx scaled by the width ratio, fy and cy by the
  height ratio, then shifted by the crop. A portrait frame therefore ends narrower than `size`
  (270x480 -> 144x256 -> 144x144): the protocol scores it there, and the scene is flagged.
- `pixelsplat` (pixelSplat and MVSplat, `crop_shim.rescale_and_crop`): both sides scaled by
  max(size / h, size / w) and rounded, each image through uint8 (truncated) and PIL LANCZOS, a
  size x size centre crop; their intrinsics are normalized, so fx, fy follow the resize and the
  principal point keeps its normalized value.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..errors import DataError


@dataclass(frozen=True)
class Framed:
    """One view after a protocol: image [3,h,w] in [0,1], pixel fxfycxcy [4] (float32), and what the
    resize did (for messages and flags)."""
    image: torch.Tensor
    fxfycxcy: torch.Tensor
    resized: tuple[int, int]  # (height, width) before the crop
    crop: tuple[int, int]  # (top, left) of the crop in the resized image


@dataclass(frozen=True)
class Protocol:
    name: str
    summary: str
    frame: Callable[[torch.Tensor, torch.Tensor, int, int], Framed]  # (image, fxfycxcy, size, patch_size)


def _to_uint8(image: torch.Tensor, truncate: bool) -> np.ndarray:
    scaled = image.detach().cpu().permute(1, 2, 0).clamp(0, 1) * 255
    return (scaled if truncate else scaled.round()).to(torch.uint8).numpy()


def _resize(image: torch.Tensor, height: int, width: int, truncate: bool = False) -> np.ndarray:
    """PIL LANCZOS on the 8-bit image, as uint8 [height,width,3]. Images decoded from 8-bit files pass
    through uint8 unchanged either way (x / 255 * 255 rounds and truncates back to x in float32)."""
    array = _to_uint8(image, truncate)
    if array.shape[:2] == (height, width):
        return array
    return np.asarray(Image.fromarray(array).resize((width, height), Image.LANCZOS))


def _tensor(array: np.ndarray) -> torch.Tensor:
    # float64 division then float32, as `np.array(image) / 255.0` and `.float()` in both official loaders.
    return torch.from_numpy(array / 255.0).permute(2, 0, 1).float()


def lvsm_frame(image: torch.Tensor, fxfycxcy: torch.Tensor, size: int, patch_size: int) -> Framed:
    h, w = image.shape[-2:]
    resize_w = int(size / h * w)
    resize_w = int(round(resize_w / patch_size) * patch_size)
    if resize_w < 1:
        raise DataError(f"protocol lvsm: a {w}x{h} frame would be {resize_w} px wide at height {size}")
    array = _resize(image, size, resize_w)
    side = min(size, resize_w)
    top, left = (size - side) // 2, (resize_w - side) // 2
    k = fxfycxcy.to(torch.float64) * torch.tensor([resize_w / w, size / h, resize_w / w, size / h], dtype=torch.float64)
    k[2] -= left
    k[3] -= top
    crop = array[top:top + side, left:left + side]
    return Framed(_tensor(crop), k.float(), (size, resize_w), (top, left))


def pixelsplat_frame(image: torch.Tensor, fxfycxcy: torch.Tensor, size: int, patch_size: int) -> Framed:
    h, w = image.shape[-2:]
    scale = max(size / h, size / w)
    new_h, new_w = round(h * scale), round(w * scale)
    array = _resize(image, new_h, new_w, truncate=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    k = fxfycxcy.to(torch.float64)
    normalized = k / torch.tensor([w, h, w, h], dtype=torch.float64)
    # fx, fy: the resize's factor (pixelSplat multiplies the normalized focal by w_in / w_out of the
    # crop); cx, cy: their normalized value, at the output size.
    k = torch.stack([normalized[0] * new_w, normalized[1] * new_h, normalized[2] * size, normalized[3] * size])
    return Framed(_tensor(array[top:top + size, left:left + size]), k.float(), (new_h, new_w), (top, left))


PROTOCOLS: dict[str, Protocol] = {
    "lvsm": Protocol("lvsm", "LVSM/Efficient-LVSM loader: height to the size, width int(size/h*w) rounded to the patch "
                     "multiple, PIL LANCZOS, square centre crop of side min(h, w) (portrait frames end narrower), "
                     "intrinsics scaled per axis and shifted by the crop", lvsm_frame),
    "pixelsplat": Protocol("pixelsplat", "pixelSplat/MVSplat rescale_and_crop: scale max(size/h, size/w) with rounded "
                           "sides, uint8 (truncated) PIL LANCZOS, size x size centre crop, fx fy scaled, principal point "
                           "kept at its normalized value", pixelsplat_frame),
}
DEFAULT_PROTOCOL = "lvsm"
DEFAULT_PATCH_SIZE = 8  # every released LVSM / Efficient-LVSM config tokenizes 8 x 8 patches


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise DataError(f"protocol {name!r} is unknown; expected one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def off_size_note(protocol: str, frame: tuple[int, int], scored: tuple[int, int], size: int) -> str:
    """The flag a scene carries when its protocol scores it at another size than size x size."""
    (fh, fw), (sh, sw) = frame, scored
    return (f"scored at {sw}x{sh} instead of {size}x{size}: protocol {protocol} sets the height of a {fw}x{fh} frame "
            f"to {size} and crops a square of the shorter side")
