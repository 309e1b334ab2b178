"""LaCT's object layout: a folder per scene holding `opencv_cameras.json`, a JSON list with one entry
per view: `w`, `h`, `fx`, `fy`, `cx`, `cy` (pixels), `w2c` (4x4, OpenCV axes) and `file_path`
(relative to the JSON's folder), typically RGBA renders on a transparent background.

Images are prepared as LaCT's loader prepares them, with PIL: the RGBA image is resized with LANCZOS
to cover the square (intrinsics scaled by the same factor), centre-cropped (principal point shifted),
and only then composited onto a uniform background (white, the object-level convention). Resizing
before compositing weights the colours by their alpha at the object's edge; compositing first, as
the other sources do, gives other edge pixels."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .frames_json import invertible_w2c, numbers, require_keys
from .geometry import w2c_to_c2w
from .registry import register_source
from .scene import Scene
from .source import FAMILIES, LRU, Source, check_span, optional_size

FILE = "opencv_cameras.json"
VIEW_KEYS = ("w", "h", "fx", "fy", "cx", "cy", "w2c", "file_path")


@register_source("opencv_cameras")
class OpenCVCameras(Source):
    """One scene per `opencv_cameras.json`: `<root>/opencv_cameras.json` itself, or one per subfolder
    `<root>/*/opencv_cameras.json`. Views keep the file's order."""

    def __init__(self, root: str, image_size: int | None = 256, background: float = 1.0, family: str = "object",
                 span: tuple[int, int] | list[int] = (5, 30)):
        self.root = Path(root)
        image_size, span = optional_size(image_size, "image_size", "opencv_cameras"), check_span(span, "opencv_cameras")
        if isinstance(background, bool) or not isinstance(background, (int, float)) or not 0 <= background <= 1:
            raise DataError(f"opencv_cameras: option 'background': expected a grey level in [0, 1], got {background!r}")
        if family not in FAMILIES:
            raise DataError(f"opencv_cameras: family {family!r} is unknown; expected one of {', '.join(FAMILIES)}")
        single = self.root / FILE
        self.files = [single] if single.is_file() else sorted(self.root.glob(f"*/{FILE}"))
        if not self.files:
            raise DataError(f"opencv_cameras: no {FILE} in {self.root} or its subfolders; expected LaCT's layout "
                            f"(<scene>/{FILE} listing w, h, fx, fy, cx, cy, w2c, file_path per view)")
        self.names = [f.parent.name for f in self.files]
        self.image_size, self.background, self.family, self.span = image_size, background, family, span
        self._metadata = LRU(self._read, 16)

    def _read(self, i: int) -> tuple[list[dict[str, Any]], torch.Tensor, torch.Tensor]:
        """The views, their pixel intrinsics [v, 4] and OpenCV c2w [v, 4, 4]."""
        path = self.files[i]
        try:
            views = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise DataError(f"opencv_cameras {path}: not valid JSON ({error})") from None
        if not isinstance(views, list) or not views or not all(isinstance(v, dict) for v in views):
            raise DataError(f"opencv_cameras {path}: expected a non-empty JSON list of view objects")
        ks, w2cs = [], []
        for j, view in enumerate(views):
            where = f"opencv_cameras {path}: view {j}"
            require_keys(view, VIEW_KEYS, where)
            k = numbers([view[key] for key in ("fx", "fy", "cx", "cy", "w", "h")], "fx/fy/cx/cy/w/h", where, "numbers")
            if not (k[[0, 1, 4, 5]] > 0).all():
                raise DataError(f"{where}: fx, fy, w, h are {k[[0, 1, 4, 5]].tolist()}; expected positive numbers")
            if not isinstance(view["file_path"], str):
                raise DataError(f"{where}: 'file_path' is {view['file_path']!r}; expected a path relative to {path.parent}")
            ks.append(k)
            w2cs.append(invertible_w2c(view, where))
        return views, torch.stack(ks), w2c_to_c2w(torch.stack(w2cs))

    def num_views(self, i: int) -> int:
        return len(self._metadata(i)[0])

    def load_views(self, i: int, indices: list[int]) -> Scene:
        views, ks, c2w = self._metadata(i)
        images, out_ks = [], []
        for j in indices:
            where = f"opencv_cameras {self.files[i]}: view {j}"
            image, k = self._image(self.files[i].parent / views[j]["file_path"], ks[j], where)
            images.append(image)
            out_ks.append(k)
        return Scene(torch.stack(images), c2w[indices].to(torch.float32), torch.stack(out_ks).to(torch.float32),
                     self.names[i], list(indices), [])

    def _image(self, path: Path, k: torch.Tensor, where: str) -> tuple[torch.Tensor, torch.Tensor]:
        """RGB [3, S, S] in [0, 1] and its pixel fxfycxcy: resize to cover, centre crop, composite."""
        if not path.is_file():
            raise DataError(f"{where}: image file {path} not found")
        try:
            with Image.open(path) as image:
                image.load()
                return self._prepare(image, k)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise DataError(f"{where}: cannot decode image {path} ({type(error).__name__}: {error}); "
                            "expected a valid PNG/JPEG") from None

    def _prepare(self, image: Image.Image, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fx, fy, cx, cy = (float(v) for v in k[:4])
        width, height = image.size
        if self.image_size is not None:
            size = self.image_size
            scale = max(size / width, size / height)  # cover the square
            new_w, new_h = int(round(width * scale)), int(round(height * scale))
            left, top = (new_w - size) // 2, (new_h - size) // 2
            image = image.resize((new_w, new_h), Image.LANCZOS).crop((left, top, left + size, top + size))
            fx, fy, cx, cy = fx * scale, fy * scale, cx * scale - left, cy * scale - top
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
            grey = round(255 * self.background)
            composited = Image.new("RGB", image.size, (grey, grey, grey))
            composited.paste(image, mask=image.split()[-1])
            image = composited
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1), torch.tensor([fx, fy, cx, cy], dtype=torch.float64)
