"""Posed image folders in the NeRF / instant-ngp / nerfstudio `transforms.json` convention:
`frames[].file_path` + `frames[].transform_matrix` (camera-to-world, OpenGL axes: x right, y up,
z backward), intrinsics from `fl_x/fl_y/cx/cy` or `camera_angle_x` (+ `camera_angle_y`), optional
`w`/`h`; any of these may be given per frame. Converted to OpenCV c2w and pixel intrinsics.
As in instant-ngp, frames whose image file is absent are left out (one warning counts them).
Lens distortion coefficients (k1.., p1..) are not applied: a warning and the scene's notes say so."""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError
from .frames_json import pose_rows, read_frames, require_keys
from .geometry import opengl_to_opencv, singular_frames
from .images import decode_image, find_image, square_scene
from .registry import register_source
from .scene import Scene
from .protocols import DEFAULT_PATCH_SIZE, DEFAULT_PROTOCOL
from .source import FAMILIES, LRU, Source, check_protocol, check_span, optional_size

INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y")
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
# Must be > 0: a zero or negative focal length, image size or field of view is no pinhole camera.
POSITIVE_KEYS = ("fl_x", "fl_y", "w", "h", "camera_angle_x", "camera_angle_y")

log = logging.getLogger(__name__)


@register_source("transforms_json")
class TransformsJson(Source):
    """One scene per transforms file: `<root>/<file>` itself, or `<root>/*/<file>` (one scene per
    subfolder). `file` defaults to transforms.json; use transforms_test.json etc. for NeRF splits.
    Frames keep the file's order; `family` says how training samples views ("object": any views,
    "scene": a frame span as in video)."""

    def __init__(self, root: str, image_size: int | None = 256, file: str = "transforms.json",
                 family: str = "object", background: float = 1.0, span: tuple[int, int] | list[int] = (5, 30),
                 protocol: str = DEFAULT_PROTOCOL, patch_size: int = DEFAULT_PATCH_SIZE):
        self.root = Path(root)
        image_size, span = optional_size(image_size, "image_size", "transforms_json"), check_span(span, "transforms_json")
        self.protocol, self.patch_size = check_protocol(protocol, patch_size, "transforms_json")
        if isinstance(background, bool) or not isinstance(background, (int, float)) or not 0 <= background <= 1:
            raise DataError(f"transforms_json: option 'background': expected a grey level in [0, 1], got {background!r}")
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
        self._warned: set[Path] = set()  # files already warned about: the metadata cache may re-read them

    def _read(self, i: int) -> tuple[list[tuple[int, dict[str, Any]]], dict[str, Any], torch.Tensor, list[str]]:
        """The frames whose image exists as (frame number in the file, frame), the top-level
        intrinsics, their OpenCV c2w, and the notes every scene of this file carries."""
        path = self.files[i]
        data, frames = read_frames(path, "transforms_json")
        kept, c2w, absent = [], [], []
        for j, frame in enumerate(frames):
            where = f"transforms_json {path}: frame {j}"
            require_keys(frame, ("file_path", "transform_matrix"), where)
            if not isinstance(frame["file_path"], str):
                raise DataError(f"{where}: 'file_path' is {frame['file_path']!r}; expected a path relative to {path.parent}")
            full = torch.eye(4, dtype=torch.float64)
            full[:3] = pose_rows(frame, "transform_matrix", where, "4x4 (or 3x4)")
            if singular_frames(full):
                raise DataError(f"{where}: 'transform_matrix' has a singular rotation block; expected a camera-to-world matrix")
            if find_image(path.parent / frame["file_path"]) is None:
                absent.append(frame["file_path"])
                continue
            kept.append((j, frame))
            c2w.append(full)
        if not kept:
            raise DataError(f"transforms_json {path}: none of its {len(frames)} frames has its image file (first: "
                            f"{absent[0]!r} under {path.parent}, with or without an image suffix)")
        shared = {k: data[k] for k in INTRINSIC_KEYS if k in data}
        distortion = [k for k in DISTORTION_KEYS
                      if any(_scalar(src, k, f"transforms_json {path}") != 0
                             for src in [data, *frames] if src.get(k) is not None)]
        notes = []
        if distortion:
            notes.append(f"lens distortion ({', '.join(distortion)}) of {path} is not undone: the images are "
                         "treated as pinhole images")
        if path not in self._warned:
            self._warned.add(path)
            if absent:
                log.warning("transforms_json %s: %d of %d frames have no image file and are left out (first: %r)",
                            path, len(absent), len(frames), absent[0])
            if distortion:
                log.warning("transforms_json %s: lens distortion (%s) is ignored; undistort the images for exact "
                            "pinhole cameras", path, ", ".join(distortion))
        return kept, shared, opengl_to_opencv(torch.stack(c2w)).to(torch.float32), notes

    @staticmethod
    def intrinsics(params: dict[str, Any], height: int, width: int, where: str) -> torch.Tensor:
        """Pixel fxfycxcy for an image of height x width. When `w`/`h` are given and the image file has
        another size (a downscaled copy), the intrinsics are scaled to the file."""
        values = {k: _scalar(params, k, where) for k in INTRINSIC_KEYS if k in params}
        bad = next((k for k in POSITIVE_KEYS if k in values and not values[k] > 0), None)
        if bad is not None:
            raise DataError(f"{where}: {bad!r} is {params[bad]!r}; expected a positive number")
        for key in ("camera_angle_x", "camera_angle_y"):
            if values.get(key, 0) >= math.pi:
                raise DataError(f"{where}: {key!r} is {params[key]!r}; expected a field of view in radians, below pi")
        w, h = values.get("w", float(width)), values.get("h", float(height))
        if "fl_x" in values:
            fx = values["fl_x"]
        elif "camera_angle_x" in values:
            fx = 0.5 * w / math.tan(0.5 * values["camera_angle_x"])
        else:
            raise DataError(f"{where}: no focal length; expected 'fl_x' or 'camera_angle_x' (top level or per frame)")
        if "fl_y" in values:
            fy = values["fl_y"]
        elif "camera_angle_y" in values:
            fy = 0.5 * h / math.tan(0.5 * values["camera_angle_y"])
        else:
            fy = fx
        k = torch.tensor([fx, fy, values.get("cx", w / 2), values.get("cy", h / 2)], dtype=torch.float64)
        return k * torch.tensor([width / w, height / h, width / w, height / h], dtype=torch.float64)

    def num_views(self, i: int) -> int:
        return len(self._metadata(i)[0])

    def load_views(self, i: int, indices: list[int]) -> Scene:
        """Views by position among the frames that have an image (frame numbers in messages are the file's)."""
        frames, shared, c2w, notes = self._metadata(i)
        images, ks = [], []
        for j in indices:
            number, frame = frames[j]
            where = f"transforms_json {self.files[i]}: frame {number}"
            raw = self.files[i].parent / frame["file_path"]
            path = find_image(raw)
            if path is None:  # present when the file was read, gone since
                raise DataError(f"{where}: image {frame['file_path']!r} not found (looked for {raw} with and without "
                                "an image suffix)")
            image = decode_image(path, where, self.background)
            params = {**shared, **{k: frame[k] for k in INTRINSIC_KEYS if k in frame}}
            images.append(image)
            ks.append(self.intrinsics(params, image.shape[-2], image.shape[-1], where))
        return square_scene(images, c2w[indices], torch.stack(ks), self.names[i], list(indices), self.image_size, notes,
                            self.protocol, self.patch_size)


def _scalar(params: dict[str, Any], key: str, where: str) -> float:
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"{where}: {key!r} is {value!r}; expected a finite number")
    return float(value)
