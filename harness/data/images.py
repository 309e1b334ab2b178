"""Decoding image files/bytes into [3,H,W] float tensors, and turning per-view images and cameras of
possibly different sizes into one square Scene through `resize_center_crop`."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .geometry import resize_center_crop
from .scene import Scene

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".JPG", ".PNG", ".JPEG")


def decode_image(data: bytes | Path, where: str, background: float = 1.0) -> torch.Tensor:
    """RGB float [3,H,W] in [0,1]; an alpha channel is composited over a uniform `background` (the
    convention of the NeRF synthetic renders). `where` names the file/scene/frame in errors."""
    if isinstance(data, Path) and not data.is_file():
        raise DataError(f"{where}: image file {data} not found")
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            image.load()
            has_alpha = image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info)
            array = np.asarray(image.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"{where}: cannot decode image ({type(error).__name__}: {error}); expected a valid PNG/JPEG") from None
    if has_alpha:
        array = array[..., :3] * array[..., 3:] + background * (1 - array[..., 3:])
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


def find_image(path: Path) -> Path | None:
    """`path` itself, or with an image suffix added (NeRF files often omit it)."""
    if path.is_file():
        return path
    for suffix in IMAGE_SUFFIXES:
        candidate = path.with_name(path.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def square_scene(images: list[torch.Tensor], c2w: torch.Tensor, fxfycxcy: torch.Tensor, name: str,
                 indices: list[int], image_size: int | None, notes: list[str] | None = None) -> Scene:
    """Resize each view (views may differ in size) to `image_size` and centre-crop; with image_size None
    the views must already share one size."""
    notes = list(notes or [])
    if image_size is None:
        shapes = {tuple(im.shape) for im in images}
        if len(shapes) > 1:
            raise DataError(f"scene {name!r}: views have different sizes {sorted(shapes)}; pass image_size to resize them")
        return Scene(torch.stack(images), c2w.to(torch.float32), fxfycxcy.to(torch.float32), name, indices, notes)
    out, ks = [], []
    for image, k in zip(images, fxfycxcy):
        resized, k = resize_center_crop(image[None], k[None], image_size)
        out.append(resized[0])
        ks.append(k[0])
    return Scene(torch.stack(out), c2w.to(torch.float32), torch.stack(ks), name, indices, notes)
