"""The on-disk capture formats, written by the tests from a known capture: RealEstate10K `.torch`
chunks (JPEG bytes, normalised intrinsics, world-to-camera rows), LVSM's `metadata/<scene>.json` with
PNGs, a transforms.json (OpenGL camera axes) with PNGs, and LaCT's opencv_cameras.json with (RGBA)
PNGs. `edit` changes the JSON before it is written, so a test can plant one bad value in an otherwise
valid file."""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

Edit = Callable[[dict[str, Any]], None] | None


@dataclass
class Capture:
    """Views of one scene: images [V, 3, H, W] in [0, 1], OpenCV camera-to-world [V, 4, 4] and
    pixel intrinsics fx, fy, cx, cy [V, 4]."""
    images: torch.Tensor
    c2w: torch.Tensor
    k: torch.Tensor
    scene: str = "s"

    @property
    def views(self) -> int:
        return self.images.shape[0]

    @property
    def height(self) -> int:
        return self.images.shape[2]

    @property
    def width(self) -> int:
        return self.images.shape[3]


def random_capture(views: int = 4, size: int = 16, seed: int = 0, scene: str = "s") -> Capture:
    """Noise images and cameras translated along x, focal length 1.25 x size: valid, and cheap."""
    g = torch.Generator().manual_seed(seed)
    images = (torch.randint(0, 256, (views, 3, size, size), generator=g) / 255).float()
    c2w = torch.eye(4).repeat(views, 1, 1)
    c2w[:, :3, 3] = torch.tensor([[0.3 * j, 0.1, -2.0] for j in range(views)])
    k = torch.tensor([1.25 * size, 1.25 * size, size / 2, size / 2]).repeat(views, 1)
    return Capture(images, c2w, k, scene)


def image_bytes(image: torch.Tensor, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy()).save(buffer, format=fmt, quality=95)
    return buffer.getvalue()


def set_key(path: list, value) -> Edit:
    """An `edit` that sets data[path[0]][path[1]]... to `value`."""
    def edit(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


def write_re10k(root: Path, capture: Capture, cameras: torch.Tensor | None = None, jpegs: list[bytes] | None = None) -> Path:
    """root/test/000000.torch and root/test/index.json; `cameras` replaces the [V, 18] camera rows."""
    folder = root / "test"
    folder.mkdir(parents=True)
    v, h, w = capture.views, capture.height, capture.width
    w2c = torch.linalg.inv(capture.c2w)[:, :3].reshape(v, 12)
    rows = torch.cat([capture.k / torch.tensor([w, h, w, h]), torch.zeros(v, 2), w2c], 1) if cameras is None else cameras
    jpegs = jpegs or [image_bytes(im, "JPEG") for im in capture.images]
    chunk = [{"key": capture.scene, "url": "https://example.invalid", "timestamps": torch.arange(v) * 33_000,
              "cameras": rows.float(), "images": [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]}]
    torch.save(chunk, folder / "000000.torch")
    (folder / "index.json").write_text(json.dumps({capture.scene: "000000.torch"}))
    return root


def write_lvsm(root: Path, capture: Capture, edit: Edit = None) -> Path:
    """root/metadata/<scene>.json, images at root/images/<scene>/NNNNN.png (absolute paths, as LVSM's)."""
    (root / "metadata").mkdir(parents=True)
    (root / "images" / capture.scene).mkdir(parents=True)
    frames = []
    for j in range(capture.views):
        path = root / "images" / capture.scene / f"{j:05d}.png"
        path.write_bytes(image_bytes(capture.images[j]))
        frames.append({"image_path": str(path), "fxfycxcy": capture.k[j].tolist(),
                       "w2c": torch.linalg.inv(capture.c2w[j]).tolist()})
    data = {"scene_name": capture.scene, "frames": frames}
    if edit:
        edit(data)
    (root / "metadata" / f"{capture.scene}.json").write_text(json.dumps(data))
    return root


def write_transforms(folder: Path, capture: Capture, intrinsics: str = "focal", edit: Edit = None, **top) -> Path:
    """folder/transforms.json and folder/images/NNN.png; intrinsics "focal" (fl_x, fl_y, cx, cy, w, h)
    or "angles" (camera_angle_x/y, centred principal point); `top` adds keys at the top level."""
    (folder / "images").mkdir(parents=True)
    gl = capture.c2w.clone()
    gl[:, :3, 1:3] *= -1                      # OpenCV -> OpenGL/Blender camera axes
    k, w, h = capture.k[0], capture.width, capture.height
    data = ({"fl_x": k[0].item(), "fl_y": k[1].item(), "cx": k[2].item(), "cy": k[3].item(), "w": w, "h": h}
            if intrinsics == "focal" else
            {"camera_angle_x": 2 * math.atan(w / (2 * k[0].item())), "camera_angle_y": 2 * math.atan(h / (2 * k[1].item()))})
    frames = []
    for j in range(capture.views):
        (folder / "images" / f"{j:03d}.png").write_bytes(image_bytes(capture.images[j]))
        frames.append({"file_path": f"./images/{j:03d}", "transform_matrix": gl[j].tolist()})
    data = {**data, **top, "frames": frames}
    if edit:
        edit(data)
    (folder / "transforms.json").write_text(json.dumps(data))
    return folder


def write_opencv_cameras(folder: Path, capture: Capture, alpha: torch.Tensor | None = None) -> Path:
    """folder/opencv_cameras.json (LaCT's layout: a list of views with w, h, fx, fy, cx, cy, w2c,
    file_path) and folder/renderings/NNNNNNNN_rgba.png; `alpha` [V, H, W] in [0, 1] makes them RGBA."""
    (folder / "renderings").mkdir(parents=True)
    views = []
    for j in range(capture.views):
        name = f"renderings/{j:08d}_rgba.png"
        pixels = capture.images[j] if alpha is None else torch.cat([capture.images[j], alpha[j][None]])
        (folder / name).write_bytes(image_bytes(pixels))
        fx, fy, cx, cy = capture.k[j].tolist()
        views.append({"w": capture.width, "h": capture.height, "fx": fx, "fy": fy, "cx": cx, "cy": cy,
                      "w2c": torch.linalg.inv(capture.c2w[j]).tolist(), "file_path": name})
    (folder / "opencv_cameras.json").write_text(json.dumps(views))
    return folder


WRITERS = {"re10k": write_re10k, "lvsm_json": write_lvsm, "transforms_json": write_transforms,
           "opencv_cameras": write_opencv_cameras}


def write_source(name: str, root: Path, capture: Capture) -> Path:
    """The `root` option of source `name` for a dataset of `capture` alone: transforms_json and
    opencv_cameras read one folder per scene under their root, the others their layout at it."""
    if name in ("transforms_json", "opencv_cameras"):
        WRITERS[name](root / capture.scene, capture)
        return root
    return WRITERS[name](root, capture)
