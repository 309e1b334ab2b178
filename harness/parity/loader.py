"""The official data loader against ours on one scene: the images a model sees, their cameras after
pose normalisation, and the metrics computed on them.

The scene is the user's (`scene`: an LVSM-layout root, `<root>/metadata/<scene>.json` with its images)
or a built-in RealEstate10K chunk of 640x360 JPEG frames. The chunk is turned into LVSM's layout by
the official `process_data.py` (it decodes with OpenCV; where OpenCV is absent, by PIL, and the row
says so), and read by the official `data/dataset_scene.py` with their inference view list; ours
reads the chunk itself through the `re10k` source (a user's scene through `lvsm_json`), protocol
`lvsm`, and normalises the poses over the same views.
"""
from __future__ import annotations

import importlib.util
import io
import json
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from ..data import make_example, open_source
from ..errors import MissingResource
from ..metrics import psnr, ssim
from models.official import attribute_config

LOADER_REPOSITORIES = ("Haian-Jin/LVSM", "Ayakaee/Efficient-LVSM")  # the official repositories whose data loader is checked
LOADER_SOURCES = ("lvsm_json", "re10k")  # our data sources `loader_parity` reads a scene through
FRAMES, WIDTH, HEIGHT = 8, 640, 360
BUILTIN_VIEWS = {"context": [0, 7], "target": [2, 4, 5]}
SCENE_NAME = "builtin_640x360"


def _frame(rng: np.random.Generator, shift: float) -> np.ndarray:
    """A smooth colour field with edges and noise: JPEG and LANCZOS both have work to do."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi, 3)
    channels = [0.5 + 0.35 * np.sin((x + shift) / (23 + 7 * c) + phase[c]) * np.cos(y / (17 + 5 * c)) for c in range(3)]
    image = np.stack(channels, -1) + 0.04 * rng.standard_normal((HEIGHT, WIDTH, 3))
    image[(x.astype(int) + int(shift)) % 97 < 6] = 0.9  # sharp vertical bars
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def write_builtin_chunk(root: Path, seed: int = 0) -> Path:
    """`root/test/000000.torch` + `index.json`: one scene of FRAMES 640x360 JPEG frames, cameras moving
    along x with principal points off centre (so a wrong crop shift shows)."""
    rng = np.random.default_rng(seed)
    folder = root / "test"
    folder.mkdir(parents=True, exist_ok=True)
    images, cameras = [], []
    for j in range(FRAMES):
        buffer = io.BytesIO()
        Image.fromarray(_frame(rng, 9.0 * j)).save(buffer, format="JPEG", quality=90)
        images.append(torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8))
        angle = 0.05 * j
        w2c = torch.eye(4, dtype=torch.float64)
        w2c[:3, :3] = torch.tensor([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
        w2c[:3, 3] = torch.tensor([-0.4 * j, 0.05 * j, 0.1])
        k = torch.tensor([0.81 + 0.01 * j, 1.43, 0.507, 0.493], dtype=torch.float64)  # fx fy cx cy, normalized
        cameras.append(torch.cat([k, torch.zeros(2, dtype=torch.float64), w2c[:3].reshape(12)]).float())
    chunk = [{"key": SCENE_NAME, "url": "builtin", "timestamps": torch.arange(FRAMES) * 33_000,
              "cameras": torch.stack(cameras), "images": images}]
    torch.save(chunk, folder / "000000.torch")
    (folder / "index.json").write_text(json.dumps({SCENE_NAME: "000000.torch"}))
    return folder / "000000.torch"


def convert_with_pil(chunk: Path, out: Path) -> None:
    """What the official `process_data.py` writes (PNG frames, pixel fxfycxcy, 4x4 w2c, absolute paths),
    decoding with PIL where OpenCV is absent."""
    for item in torch.load(chunk, weights_only=True):
        scene = out / "images" / item["key"]
        scene.mkdir(parents=True, exist_ok=True)
        frames = []
        for j, data in enumerate(item["images"]):
            with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
                rgb = image.convert("RGB")
            w, h = rgb.size
            path = scene / f"{j:05d}.png"
            rgb.save(path)
            row = item["cameras"][j].tolist()
            w2c = np.vstack([np.array(row[6:], dtype=np.float32).reshape(3, 4), [0, 0, 0, 1]])
            frames.append({"image_path": str(path), "fxfycxcy": [row[0] * w, row[1] * h, row[2] * w, row[3] * h],
                           "w2c": w2c.tolist()})
        (out / "metadata").mkdir(parents=True, exist_ok=True)
        (out / "metadata" / f"{item['key']}.json").write_text(json.dumps({"scene_name": item["key"], "frames": frames}))


def _process_data_module(load: Callable[[str], types.ModuleType], checkout: Path) -> types.ModuleType | None:
    """Their chunk converter (LVSM: process_data.py; Efficient-LVSM: utils/process_data.py), if OpenCV is here."""
    if importlib.util.find_spec("cv2") is None:
        return None
    for name in ("process_data", "utils.process_data"):
        if (checkout / (name.replace(".", "/") + ".py")).is_file():
            return load(name)
    return None


def official_views(load: Callable[[str], types.ModuleType], metadata: Path, scene: str, views: dict[str, list[int]],
                   image_size: int, patch_size: int, work: Path) -> dict[str, torch.Tensor]:
    """The official Dataset's item for `scene` with these context and target views."""
    (work / "list.txt").write_text(f"{metadata}\n")
    (work / "views.json").write_text(json.dumps({scene: views}))
    config = attribute_config({
        "model": {"image_tokenizer": {"image_size": image_size, "patch_size": patch_size}},
        "training": {"dataset_path": str(work / "list.txt"), "square_crop": True, "scene_scale_factor": 1.35,
                     "num_views": len(views["context"]) + len(views["target"]), "view_selector": {},
                     "num_input_views": len(views["context"]), "num_target_views": len(views["target"])},
        "inference": {"if_inference": True, "view_idx_file_path": str(work / "views.json")},
    })
    dataset = load("data.dataset_scene").Dataset(config)
    return dataset[0]


def compare(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Largest differences of images, intrinsics (also relative to fx) and normalised c2w, and of PSNR /
    SSIM computed by our metrics and theirs on the same stand-in prediction (the target views plus
    fixed noise)."""
    image_diff = (ours["image"] - theirs["image"]).abs().max().item() if ours["image"].shape == theirs["image"].shape else None
    k_diff = (ours["fxfycxcy"].double() - theirs["fxfycxcy"].double()).abs()
    return {"image_shape_ours": list(ours["image"].shape), "image_shape_official": list(theirs["image"].shape),
            "max_image_diff": image_diff, "max_image_diff_255": None if image_diff is None else image_diff * 255,
            "max_intrinsics_diff_px": k_diff.max().item(),
            "max_intrinsics_diff_rel_fx": (k_diff / theirs["fxfycxcy"][:, :1].double()).max().item(),
            "max_c2w_diff": (ours["c2w"] - theirs["c2w"]).abs().max().item()}


def metric_differences(load: Callable[[str], types.ModuleType], target: torch.Tensor) -> dict[str, Any]:
    metric_utils = load("utils.metric_utils")
    g = torch.Generator().manual_seed(0)
    prediction = (target + 0.05 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    ours_psnr, theirs_psnr = psnr(prediction, target), metric_utils.compute_psnr(target, prediction).double()
    ours_ssim, theirs_ssim = ssim(prediction, target), metric_utils.compute_ssim(target, prediction).double()
    return {"psnr_db": ours_psnr.mean().item(), "max_psnr_diff_db": (ours_psnr - theirs_psnr).abs().max().item(),
            "ssim": ours_ssim.mean().item(), "max_ssim_diff": (ours_ssim - theirs_ssim).abs().max().item()}


def loader_parity(load: Callable[[str], types.ModuleType], checkout: Path, scene: str, work: Path, image_size: int,
                  patch_size: int) -> dict[str, Any]:
    """One scene through both loaders: the built-in chunk (`scene` empty) or the user's LVSM-layout scene."""
    work.mkdir(parents=True, exist_ok=True)
    if scene:
        root = Path(scene)
        files = sorted((root / "metadata").glob("*.json")) if root.is_dir() else [root]
        if not files or not files[0].is_file():
            raise MissingResource(f"parity scene {scene}: expected an LVSM-layout root (metadata/<scene>.json) or one such json")
        metadata = files[0]
        source = open_source("lvsm_json", root=str(metadata.parent.parent), image_size=image_size, protocol="lvsm",
                             patch_size=patch_size)
        name = json.loads(metadata.read_text()).get("scene_name", metadata.stem)
        count = source.num_views(source.index_of(metadata.stem))
        last = min(count - 1, 40)
        views = {"context": [0, last], "target": sorted({max(1, last // 4), max(1, last // 2), max(1, 3 * last // 4)})}
        index, converter, described = source.index_of(metadata.stem), "none (LVSM layout given)", f"{metadata}"
    else:
        chunk = write_builtin_chunk(work / "re10k")
        converted = work / "lvsm_layout"
        module = _process_data_module(load, checkout)
        if module is not None:
            module.process_torch_file(str(chunk), str(converted))
            converter = "official process_data.py (OpenCV decode)"
        else:
            convert_with_pil(chunk, converted)
            converter = "PIL decode (OpenCV absent; the official process_data.py decodes with OpenCV)"
        source = open_source("re10k", root=str(work / "re10k"), image_size=image_size, protocol="lvsm", patch_size=patch_size)
        metadata, name, views, index = converted / "metadata" / f"{SCENE_NAME}.json", SCENE_NAME, BUILTIN_VIEWS, 0
        described = f"built-in RealEstate10K chunk, {FRAMES} JPEG frames {WIDTH}x{HEIGHT}"
    theirs = official_views(load, metadata, name, views, image_size, patch_size, work)
    example = make_example(source, index, views["context"], views["target"], normalize=True)
    ours = {"image": torch.cat([example.input_images, example.target_images]),
            "c2w": torch.cat([example.input_c2w, example.target_c2w]),
            "fxfycxcy": torch.cat([example.input_fxfycxcy, example.target_fxfycxcy])}
    n = len(views["context"])
    return {"scene": described, "converter": converter, "views": views, "our_source": source.source_name,
            **compare(ours, theirs), **metric_differences(load, theirs["image"][n:])}
