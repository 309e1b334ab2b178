"""LVSM's preprocessed RealEstate10K layout: `<root>/metadata/<scene>.json` =
{"scene_name", "frames": [{"image_path", "fxfycxcy" (pixels), "w2c" (4x4 OpenCV)}]} with the images
under `<root>/images/<scene>/`; an optional `<root>/full_list.txt` lists the json files to use."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .errors import DataError
from .geometry import w2c_to_c2w
from .images import decode_image, square_scene
from .registry import register_source
from .scene import Scene
from .source import LRU, Source


@register_source("lvsm_json")
class LVSMJson(Source):
    family = "scene"

    def __init__(self, root: str, image_size: int | None = 256, span: tuple[int, int] | list[int] = (25, 192)):
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
        self.image_size, self.span = image_size, tuple(span)
        self._metadata = LRU(self._read, 64)

    def _read(self, i: int) -> tuple[list[dict[str, Any]], torch.Tensor, torch.Tensor]:
        path = self.files[i]
        if not path.is_file():
            raise DataError(f"lvsm_json: metadata file {path} not found")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise DataError(f"lvsm_json {path}: not valid JSON ({error})") from None
        frames = data.get("frames") if isinstance(data, dict) else None
        if not isinstance(frames, list) or not frames:
            raise DataError(f"lvsm_json {path}: expected an object with a non-empty 'frames' list")
        ks, w2cs = [], []
        for j, frame in enumerate(frames):
            where = f"lvsm_json {path}: frame {j}"
            missing = [k for k in ("image_path", "fxfycxcy", "w2c") if k not in frame]
            if missing:
                raise DataError(f"{where}: missing key {missing[0]!r}")
            k = torch.tensor(frame["fxfycxcy"], dtype=torch.float64)
            if k.shape != (4,):
                raise DataError(f"{where}: 'fxfycxcy' has shape {tuple(k.shape)}; expected 4 numbers in pixels")
            w2c = torch.tensor(frame["w2c"], dtype=torch.float64)
            if w2c.shape not in ((4, 4), (3, 4)):
                raise DataError(f"{where}: 'w2c' has shape {tuple(w2c.shape)}; expected a 4x4 (or 3x4) matrix")
            ks.append(k)
            w2cs.append(w2c[:3])
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
        return square_scene(images, c2w[indices], ks[indices], self.names[i], list(indices), self.image_size)
