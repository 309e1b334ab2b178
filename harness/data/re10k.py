"""RealEstate10K in pixelSplat's layout: `<root>/<split>/NNNNNN.torch` chunks plus `index.json`
(scene key -> chunk file). A chunk is a list of dicts: `key`, `url`, `timestamps` int64 [N], `cameras`
float32 [N,18] (fx fy cx cy normalized by width/height, two unused zeros, row-major 3x4 OpenCV
world-to-camera), `images` (list of uint8 tensors holding JPEG bytes)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError
from .geometry import singular_frames, w2c_to_c2w
from .images import decode_image, square_scene
from .registry import register_source
from .scene import Scene
from .protocols import DEFAULT_PATCH_SIZE, DEFAULT_PROTOCOL
from .source import LRU, Source, check_protocol, check_span, optional_size, positive_int

CAMERA_WIDTH = 18


def camera_rows(cameras: torch.Tensor, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """[N,18] rows -> (normalized fxfycxcy [N,4], c2w [N,4,4]); a row that is no camera is named by frame."""
    layout = "(fx fy cx cy normalized, 2 zeros, 3x4 world-to-camera)"
    if not isinstance(cameras, torch.Tensor) or not cameras.is_floating_point():
        raise DataError(f"{where}: cameras are {type(cameras).__name__} "
                        f"{getattr(cameras, 'dtype', '')}; expected a float tensor [N,{CAMERA_WIDTH}] {layout}")
    if cameras.dim() != 2 or cameras.shape[1] != CAMERA_WIDTH:
        raise DataError(f"{where}: cameras have shape {tuple(cameras.shape)}; expected [N,{CAMERA_WIDTH}] {layout}")
    cameras = cameras.to(torch.float64)
    bad = (~torch.isfinite(cameras)).any(1).nonzero()[:, 0].tolist()
    if bad:
        raise DataError(f"{where}: frame {bad[0]}: camera row holds NaN or Infinity ({len(bad)} such rows); "
                        "expected finite numbers")
    bad = (cameras[:, :2] <= 0).any(1).nonzero()[:, 0].tolist()
    if bad:
        raise DataError(f"{where}: frame {bad[0]}: focal lengths {cameras[bad[0], :2].tolist()}; expected fx, fy > 0")
    w2c = cameras[:, 6:].reshape(-1, 3, 4)
    bad = singular_frames(w2c)
    if bad:
        raise DataError(f"{where}: frame {bad[0]}: singular world-to-camera rotation; expected an invertible matrix")
    return cameras[:, :4], w2c_to_c2w(w2c)


@register_source("re10k")
class RealEstate10K(Source):
    """Scenes of one split, in index.json order; JPEGs are decoded only for the views asked for. The
    normalized intrinsics are turned into pixels with each decoded frame's own size, then every view is
    resized and centre-cropped to `image_size` by the evaluation `protocol` (`protocols`)."""
    family = "scene"

    def __init__(self, root: str, split: str = "test", image_size: int | None = 256,
                 span: tuple[int, int] | list[int] = (25, 192), cache_chunks: int = 2,
                 protocol: str = DEFAULT_PROTOCOL, patch_size: int = DEFAULT_PATCH_SIZE):
        image_size, span = optional_size(image_size, "image_size", "re10k"), check_span(span, "re10k")
        self.protocol, self.patch_size = check_protocol(protocol, patch_size, "re10k")
        cache_chunks = positive_int(cache_chunks, "cache_chunks", "re10k")
        base = Path(root)
        folder = base / split if (base / split / "index.json").is_file() else base
        self.index_path = folder / "index.json"
        if not self.index_path.is_file():
            raise DataError(f"re10k: no index.json in {base / split} or {base}; expected pixelSplat's layout "
                            "<root>/<split>/index.json + NNNNNN.torch chunks (RealEstate10K is not bundled: "
                            "download and convert it with pixelSplat's scripts, then pass root=...)")
        try:
            index = json.loads(self.index_path.read_text())
        except json.JSONDecodeError as error:
            raise DataError(f"re10k {self.index_path}: not valid JSON ({error})") from None
        if not isinstance(index, dict) or not all(isinstance(v, str) for v in index.values()):
            raise DataError(f"re10k {self.index_path}: expected a JSON object scene key -> chunk file name")
        self.folder, self.image_size, self.span = folder, image_size, tuple(span)
        self.names = list(index)
        self.chunk_of = index
        self._chunk = LRU(self._load_chunk, cache_chunks)

    def _load_chunk(self, file: str) -> dict[str, dict[str, Any]]:
        path = self.folder / file
        if not path.is_file():
            raise DataError(f"re10k {self.index_path}: chunk {path} named by the index does not exist")
        try:
            items = torch.load(path, weights_only=True)
        except Exception as error:  # torch raises many types for a damaged pickle/zip
            raise DataError(f"re10k {path}: cannot load chunk ({type(error).__name__}: {error})") from None
        if not isinstance(items, list) or not all(isinstance(x, dict) and "key" in x for x in items):
            raise DataError(f"re10k {path}: expected a list of dicts with 'key', 'cameras', 'images'")
        return {x["key"]: x for x in items}

    def _item(self, i: int) -> tuple[dict[str, Any], str]:
        name = self.names[i]
        file = self.chunk_of[name]
        where = f"re10k {self.folder / file}: scene {name!r}"
        item = self._chunk(file).get(name)
        if item is None:
            raise DataError(f"{where}: index.json names this chunk but the chunk has no such key")
        for key in ("cameras", "images"):
            if key not in item:
                raise DataError(f"{where}: missing {key!r}")
        if len(item["images"]) != len(item["cameras"]):
            raise DataError(f"{where}: {len(item['images'])} images but {len(item['cameras'])} camera rows; expected one per frame")
        return item, where

    def num_views(self, i: int) -> int:
        return len(self._item(i)[0]["cameras"])

    def load_views(self, i: int, indices: list[int]) -> Scene:
        item, where = self._item(i)
        intrinsics, c2w = camera_rows(item["cameras"], where)
        images, ks = [], []
        for j in indices:
            data = item["images"][j]
            data = data.numpy().tobytes() if isinstance(data, torch.Tensor) else bytes(data)
            image = decode_image(data, f"{where} frame {j}")
            h, w = image.shape[-2:]
            images.append(image)
            ks.append(intrinsics[j] * torch.tensor([w, h, w, h], dtype=torch.float64))
        return square_scene(images, c2w[indices], torch.stack(ks), self.names[i], list(indices), self.image_size,
                            protocol=self.protocol, patch_size=self.patch_size)
