"""LVSM's preprocessed RealEstate10K layout: `<root>/metadata/<scene>.json` =
{"scene_name", "frames": [{"image_path", "fxfycxcy" (pixels), "w2c" (4x4 OpenCV)}]} with the images
under `<root>/images/<scene>/`; an optional `<root>/full_list.txt` lists the json files to use."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import DataError
from .frames_json import invertible_w2c, numbers, read_frames, require_keys
from .geometry import w2c_to_c2w
from .images import decode_image, square_scene
from .registry import register_source
from .scene import Scene
from .protocols import DEFAULT_PATCH_SIZE, DEFAULT_PROTOCOL
from .source import LRU, Source, check_protocol, check_span, optional_size


@register_source("lvsm_json")
class LVSMJson(Source):
    family = "scene"

    def __init__(self, root: str, image_size: int | None = 256, span: tuple[int, int] | list[int] = (25, 192),
                 protocol: str = DEFAULT_PROTOCOL, patch_size: int = DEFAULT_PATCH_SIZE):
        self.root = Path(root)
        listing = self.root / "full_list.txt"
        if listing.is_file():
            files = [Path(line.strip()) for line in listing.read_text().splitlines() if line.strip()]
            self.files = [f if f.is_absolute() else self.root / f for f in files]
        else:
            self.files = sorted((self.root / "metadata").glob("*.json"))
        if not self.files:
            raise DataError(f"lvsm_json: no scenes under {self.root}; expected {self.root}/metadata/<scene>.json "
                            "(or a full_list.txt naming them)")
        self.names = [f.stem for f in self.files]
        self.protocol, self.patch_size = check_protocol(protocol, patch_size, "lvsm_json")
        self.image_size, self.span = optional_size(image_size, "image_size", "lvsm_json"), check_span(span, "lvsm_json")
        self._metadata = LRU(self._read, 64)

    def _read(self, i: int) -> tuple[list[dict[str, Any]], torch.Tensor, torch.Tensor]:
        path = self.files[i]
        if not path.is_file():
            raise DataError(f"lvsm_json: metadata file {path} not found")
        _, frames = read_frames(path, "lvsm_json")
        ks, w2cs = [], []
        for j, frame in enumerate(frames):
            where = f"lvsm_json {path}: frame {j}"
            require_keys(frame, ("image_path", "fxfycxcy", "w2c"), where)
            k = numbers(frame["fxfycxcy"], "fxfycxcy", where, "4 numbers in pixels")
            if k.shape != (4,):
                raise DataError(f"{where}: 'fxfycxcy' has shape {tuple(k.shape)}; expected 4 numbers in pixels")
            if not (k[:2] > 0).all():
                raise DataError(f"{where}: 'fxfycxcy' has focal lengths {k[:2].tolist()}; expected fx, fy > 0 pixels")
            ks.append(k)
            w2cs.append(invertible_w2c(frame, where))
        return frames, torch.stack(ks), w2c_to_c2w(torch.stack(w2cs))

    def _image_path(self, i: int, frame: dict[str, Any], where: str) -> Path:
        raw = Path(frame["image_path"])
        # LVSM writes absolute paths; when the data set has moved, fall back to the standard layout.
        candidates = [raw] if raw.is_absolute() else [self.root / raw, self.files[i].parent / raw]
        candidates.append(self.root / "images" / self.names[i] / raw.name)
        for path in candidates:
            if path.is_file():
                return path
        raise DataError(f"{where}: image {str(raw)!r} not found (looked at {', '.join(map(str, candidates))})")

    def num_views(self, i: int) -> int:
        return len(self._metadata(i)[0])

    def load_views(self, i: int, indices: list[int]) -> Scene:
        frames, ks, c2w = self._metadata(i)
        images = []
        for j in indices:
            where = f"lvsm_json {self.files[i]}: frame {j}"
            images.append(decode_image(self._image_path(i, frames[j], where), where))
        return square_scene(images, c2w[indices], ks[indices], self.names[i], list(indices), self.image_size,
                            protocol=self.protocol, patch_size=self.patch_size)
