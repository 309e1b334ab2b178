"""Posed image folders in the NeRF / instant-ngp / nerfstudio `transforms.json` convention:
`frames[].file_path` + `frames[].transform_matrix` (camera-to-world, OpenGL axes: x right, y up,
z backward), intrinsics from `fl_x/fl_y/cx/cy` or `camera_angle_x` (+ `camera_angle_y`), optional
`w`/`h`; any of these may be given per frame. Converted to OpenCV c2w and pixel intrinsics.
Lens distortion coefficients (k1.., p1..) are not applied (a warning says so)."""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError
from .frames_json import pose_rows, read_frames, require_keys
from .geometry import opengl_to_opencv
from .images import decode_image, find_image, square_scene
from .registry import register_source
from .scene import Scene
from .source import FAMILIES, LRU, Source

INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y")
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")


@register_source("transforms_json")
class TransformsJson(Source):
    """One scene per transforms file: `<root>/<file>` itself, or `<root>/*/<file>` (one scene per
    subfolder). `file` defaults to transforms.json; use transforms_test.json etc. for NeRF splits.
    Frames keep the file's order; `family` says how training samples views ("object": any views,
    "scene": a frame span as in video)."""

    def __init__(self, root: str, image_size: int | None = 256, file: str = "transforms.json",
                 family: str = "object", background: float = 1.0, span: tuple[int, int] | list[int] = (5, 30)):
        self.root = Path(root)
        if family not in FAMILIES:
            raise DataError(f"transforms_json: family {family!r} is unknown; expected one of {', '.join(FAMILIES)}")
        single = self.root / file
        self.files = [single] if single.is_file() else sorted(self.root.glob(f"*/{file}"))
        if not self.files:
            raise DataError(f"transforms_json: no {file} in {self.root} or its subfolders; expected a "
                            "NeRF/instant-ngp/nerfstudio transforms file")
        self.names = [f.parent.name for f in self.files]
        self.image_size, self.family, self.background, self.span = image_size, family, background, tuple(span)
        self._metadata = LRU(self._read, 16)

    def _read(self, i: int) -> tuple[list[dict[str, Any]], dict[str, Any], torch.Tensor]:
        path = self.files[i]
        data, frames = read_frames(path, "transforms_json")
        c2w = []
        for j, frame in enumerate(frames):
            where = f"transforms_json {path}: frame {j}"
            require_keys(frame, ("file_path", "transform_matrix"), where)
            full = torch.eye(4, dtype=torch.float64)
            full[:3] = pose_rows(frame, "transform_matrix", where, "4x4 (or 3x4)")
            c2w.append(full)
        shared = {k: data[k] for k in INTRINSIC_KEYS if k in data}
        distortion = [k for k in DISTORTION_KEYS if any(float(src.get(k, 0) or 0) != 0 for src in [data, *frames])]
        if distortion:
            warnings.warn(f"transforms_json {path}: lens distortion ({', '.join(distortion)}) is ignored; "
                          "undistort the images for exact pinhole cameras", stacklevel=2)
        return frames, shared, opengl_to_opencv(torch.stack(c2w)).to(torch.float32)

    @staticmethod
    def intrinsics(params: dict[str, Any], height: int, width: int, where: str) -> torch.Tensor:
        """Pixel fxfycxcy for an image of height x width. When `w`/`h` are given and the image file has
        another size (a downscaled copy), the intrinsics are scaled to the file."""
        w, h = float(params.get("w", width)), float(params.get("h", height))
        if "fl_x" in params:
            fx = float(params["fl_x"])
        elif "camera_angle_x" in params:
            fx = 0.5 * w / math.tan(0.5 * float(params["camera_angle_x"]))
        else:
            raise DataError(f"{where}: no focal length; expected 'fl_x' or 'camera_angle_x' (top level or per frame)")
        if "fl_y" in params:
            fy = float(params["fl_y"])
        elif "camera_angle_y" in params:
            fy = 0.5 * h / math.tan(0.5 * float(params["camera_angle_y"]))
        else:
            fy = fx
        k = torch.tensor([fx, fy, float(params.get("cx", w / 2)), float(params.get("cy", h / 2))], dtype=torch.float64)
        return k * torch.tensor([width / w, height / h, width / w, height / h], dtype=torch.float64)

    def num_views(self, i: int) -> int:
        return len(self._metadata(i)[0])

    def load_views(self, i: int, indices: list[int]) -> Scene:
        frames, shared, c2w = self._metadata(i)
        images, ks = [], []
        for j in indices:
            where = f"transforms_json {self.files[i]}: frame {j}"
            raw = self.files[i].parent / frames[j]["file_path"]
            path = find_image(raw)
            if path is None:
                raise DataError(f"{where}: image {frames[j]['file_path']!r} not found (looked for {raw} with and without an image suffix)")
            image = decode_image(path, where, self.background)
            params = {**shared, **{k: frames[j][k] for k in INTRINSIC_KEYS if k in frames[j]}}
            images.append(image)
            ks.append(self.intrinsics(params, image.shape[-2], image.shape[-1], where))
        return square_scene(images, c2w[indices], torch.stack(ks), self.names[i], list(indices), self.image_size)
