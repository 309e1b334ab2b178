"""Decoding image files/bytes into [3,H,W] float tensors, and turning per-view images and cameras of
possibly different sizes into one Scene through an evaluation protocol (`protocols`)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .protocols import DEFAULT_PATCH_SIZE, DEFAULT_PROTOCOL, get_protocol, off_size_note
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
                 indices: list[int], image_size: int | None, notes: list[str] | None = None,
                 protocol: str = DEFAULT_PROTOCOL, patch_size: int = DEFAULT_PATCH_SIZE) -> Scene:
    """Each view (views may differ in size) resized and centre-cropped to `image_size` by the evaluation
    `protocol` (see `protocols`); with image_size None the views must already share one size. A view
    the protocol scores at another size (a portrait frame under `lvsm`) adds a note that says so."""
    notes = list(notes or [])
    if image_size is None:
        shapes = {tuple(im.shape) for im in images}
        if len(shapes) > 1:
            raise DataError(f"scene {name!r}: views have different sizes {sorted(shapes)}; pass image_size to resize them")
        return Scene(torch.stack(images), c2w.to(torch.float32), fxfycxcy.to(torch.float32), name, indices, notes)
    rule = get_protocol(protocol)
    framed = [rule.frame(image, k, image_size, patch_size) for image, k in zip(images, fxfycxcy)]
    shapes = sorted({tuple(f.image.shape[-2:]) for f in framed})
    if len(shapes) > 1:
        raise DataError(f"scene {name!r}: protocol {protocol} gives its views different sizes {shapes} (frames of "
                        "different aspect ratios); expected one frame size per scene")
    if shapes[0] != (image_size, image_size):
        frames = sorted({tuple(im.shape[-2:]) for im in images})
        notes.append(off_size_note(protocol, frames[0], shapes[0], image_size))
    return Scene(torch.stack([f.image for f in framed]), c2w.to(torch.float32), torch.stack([f.fxfycxcy for f in framed]),
                 name, indices, notes)
