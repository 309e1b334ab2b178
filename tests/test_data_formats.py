"""harness.data on-disk formats: fixtures written here in each layout (RealEstate10K .torch chunks with
JPEG bytes, LVSM metadata/*.json + PNGs, transforms.json + PNGs) from one rendered scene with known
cameras, loaded back through `open_source`; plus the one-line errors for bad input."""
from __future__ import annotations

import io
import json
import math
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

from harness.data import DataError, evaluation_examples, open_source
from harness.data.synthetic import SyntheticScenes

H, W, S = 60, 100, 48      # stored frames are landscape; the loaders resize to height S and centre-crop
VIEWS = 4
SCENE = "scene_a"


def project(points: torch.Tensor, c2w: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    cam = (points - c2w[:3, 3]) @ c2w[:3, :3]
    return torch.stack([k[0] * cam[:, 0] / cam[:, 2] + k[2], k[1] * cam[:, 1] / cam[:, 2] + k[3]], -1)


@pytest.fixture(scope="module")
def truth():
    """A rendered scene at H x W with known OpenCV cameras and non-trivial intrinsics (fx != fy,
    off-centre principal point)."""
    src = SyntheticScenes(count=1, seed=3, image_size=S, frames=16)
    world = src.world(0)
    c2w = src.cameras(0, [0, 4, 8, 12])
    k = torch.tensor([72.0, 75.0, W / 2 + 3.0, H / 2 - 2.0]).repeat(VIEWS, 1)
    images, _ = world.render(c2w, k, (H, W))
    return {"world": world, "c2w": c2w, "k": k, "images": images}


def png_bytes(image: torch.Tensor, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy()).save(buffer, format=fmt, quality=95)
    return buffer.getvalue()


def write_re10k(root: Path, truth, cameras: torch.Tensor | None = None, jpegs: list[bytes] | None = None) -> Path:
    folder = root / "test"
    folder.mkdir(parents=True)
    w2c = torch.linalg.inv(truth["c2w"])[:, :3].reshape(VIEWS, 12)
    normalized = truth["k"] / torch.tensor([W, H, W, H])
    rows = torch.cat([normalized, torch.zeros(VIEWS, 2), w2c], 1) if cameras is None else cameras
    jpegs = jpegs or [png_bytes(im, "JPEG") for im in truth["images"]]
    chunk = [{"key": SCENE, "url": "https://example.invalid", "timestamps": torch.arange(VIEWS) * 33_000,
              "cameras": rows.float(), "images": [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]}]
    torch.save(chunk, folder / "000000.torch")
    (folder / "index.json").write_text(json.dumps({SCENE: "000000.torch"}))
    return root


def write_lvsm(root: Path, truth) -> Path:
    (root / "metadata").mkdir(parents=True)
    (root / "images" / SCENE).mkdir(parents=True)
    frames = []
    for j in range(VIEWS):
        path = root / "images" / SCENE / f"{j:05d}.png"
        path.write_bytes(png_bytes(truth["images"][j]))
        frames.append({"image_path": str(path), "fxfycxcy": truth["k"][j].tolist(),
                       "w2c": torch.linalg.inv(truth["c2w"][j]).tolist()})
    (root / "metadata" / f"{SCENE}.json").write_text(json.dumps({"scene_name": SCENE, "frames": frames}))
    return root


def write_transforms(root: Path, truth, intrinsics: str = "focal") -> Path:
    folder = root / SCENE
    (folder / "images").mkdir(parents=True)
    gl = truth["c2w"].clone()
    gl[:, :3, 1:3] *= -1                      # OpenCV -> OpenGL/Blender camera axes
    k = truth["k"][0]
    top = ({"fl_x": k[0].item(), "fl_y": k[1].item(), "cx": k[2].item(), "cy": k[3].item(), "w": W, "h": H}
           if intrinsics == "focal" else
           {"camera_angle_x": 2 * math.atan(W / (2 * k[0].item())), "camera_angle_y": 2 * math.atan(H / (2 * k[1].item()))})
    frames = []
    for j in range(VIEWS):
        (folder / "images" / f"{j:03d}.png").write_bytes(png_bytes(truth["images"][j]))
        frames.append({"file_path": f"./images/{j:03d}", "transform_matrix": gl[j].tolist()})
    (folder / "transforms.json").write_text(json.dumps({**top, "frames": frames}))
    return root


def test_every_format_loads_the_same_cameras_and_pixels(tmp_path, truth):
    sources = {
        "re10k": open_source("re10k", root=str(write_re10k(tmp_path / "re10k", truth)), image_size=S),
        "lvsm_json": open_source("lvsm_json", root=str(write_lvsm(tmp_path / "lvsm", truth)), image_size=S),
        "transforms_json": open_source("transforms_json", root=str(write_transforms(tmp_path / "tj", truth)), image_size=S),
    }
    # Where a pixel of the original frame lands after resize-to-height + centre crop.
    scale = S / H
    left = (round(W * scale) - S) // 2
    points = torch.tensor([[0.3, 0.8, -1.0], [-1.0, 0.5, -2.0], [1.2, 1.5, -1.5], [0.0, 1.2, -0.5]])
    for name, src in sources.items():
        assert src.names == [SCENE] and src.num_views(0) == VIEWS
        scene = src[0]
        assert scene.images.shape == (VIEWS, 3, S, S)
        assert torch.allclose(scene.c2w, truth["c2w"], atol=1e-5), name
        for j in range(VIEWS):
            expected = project(points, truth["c2w"][j], truth["k"][j]) * scale - torch.tensor([left, 0.0])
            assert torch.allclose(project(points, scene.c2w[j], scene.fxfycxcy[j]), expected, atol=1e-3), name
        # The loaded images show what the loaded cameras see: re-render with them and compare (the rest
        # is resampling blur and JPEG loss); a 1.5-pixel shift of the principal point is clearly worse.
        rendered, _ = truth["world"].render(scene.c2w, scene.fxfycxcy, S)
        error = (rendered - scene.images).abs().mean()
        shifted = scene.fxfycxcy + torch.tensor([0.0, 0.0, 1.5, 0.0])
        error_shifted = (truth["world"].render(scene.c2w, shifted, S)[0] - scene.images).abs().mean()
        assert error < 0.04 and error < 0.7 * error_shifted, (name, error, error_shifted)
    lossless = [sources["lvsm_json"][0].images, sources["transforms_json"][0].images]
    assert torch.allclose(*lossless, atol=1e-6)
    assert (sources["re10k"][0].images - lossless[0]).abs().mean() < 0.02     # JPEG vs PNG


def test_transforms_json_camera_angles_give_the_same_intrinsics(tmp_path, truth, caplog):
    src = open_source("transforms_json", root=str(write_transforms(tmp_path, truth, "angles")), image_size=None)
    scene = src.views(0, [1])
    k = truth["k"][1]
    assert torch.allclose(scene.fxfycxcy[0], torch.tensor([k[0], k[1], W / 2, H / 2]), atol=1e-3)
    assert scene.images.shape == (1, 3, H, W) and src.family == "object" and scene.notes == []
    meta = tmp_path / SCENE / "transforms.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "k1": 0.05, "p2": None}))
    # Never silent: one logged warning per file (however often it is read), and a note on every scene.
    for _ in range(2):
        src = open_source("transforms_json", root=str(tmp_path))
        scene, again = src[0], src.views(0, [1])
        assert len(scene.notes) == 1 and "lens distortion (k1)" in scene.notes[0] and again.notes == scene.notes
        warned = [r for r in caplog.records if "lens distortion (k1) is ignored" in r.getMessage()]
        assert len(warned) == 1 and str(meta) in warned[0].getMessage() and warned[0].levelname == "WARNING"
        caplog.clear()


def test_samplers_run_on_a_loaded_source(tmp_path, truth):
    src = open_source("lvsm_json", root=str(write_lvsm(tmp_path, truth)), image_size=32, span=(2, 3))
    (ex,) = evaluation_examples(src, {SCENE: {"context": [0, 3], "target": [1, 2]}})
    assert ex.input_images.shape == (2, 3, 32, 32) and ex.target_indices == [1, 2]
    copy = pickle.loads(pickle.dumps(src))            # DataLoader workers may receive sources by pickle
    assert torch.equal(copy.views(0, [1]).images, ex.target_images[:1])


# --- bad input: one-line errors naming the file/scene and what was expected ---------------------------

def one_line(error: pytest.ExceptionInfo, *needles: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)


def test_missing_image_is_named(tmp_path, truth):
    root = write_lvsm(tmp_path / "lvsm", truth)
    (root / "images" / SCENE / "00002.png").unlink()
    src = open_source("lvsm_json", root=str(root), image_size=S)
    src.views(0, [0, 1])
    with pytest.raises(DataError) as error:
        src.views(0, [2])
    one_line(error, f"{SCENE}.json", "frame 2", "00002.png", "not found")



def test_transforms_json_leaves_out_frames_without_images(tmp_path, truth, caplog):
    """instant-ngp's fox lists 67 frames and ships 50 images: frames without an image are left out with
    one warning that counts them; only a file with no image at all is an error."""
    root = write_transforms(tmp_path / "tj", truth)
    for j in (1, 2):
        (root / SCENE / "images" / f"00{j}.png").unlink()
    src = open_source("transforms_json", root=str(root), image_size=S)
    assert src.num_views(0) == VIEWS - 2
    scene = src[0]
    assert torch.allclose(scene.c2w, truth["c2w"][[0, 3]], atol=1e-5)      # frames 0 and 3, in file order
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "2 of 4 frames have no image file" in warned[0] and "transforms.json" in warned[0]
    for j in (0, 3):
        (root / SCENE / "images" / f"00{j}.png").unlink()
    with pytest.raises(DataError) as error:
        open_source("transforms_json", root=str(root))[0]
    one_line(error, "transforms.json", "none of its 4 frames has its image file", "./images/000")


def test_corrupt_jpeg_is_named(tmp_path, truth):
    jpegs = [png_bytes(im, "JPEG") for im in truth["images"]]
    jpegs[1] = jpegs[1][: len(jpegs[1]) // 3]
    src = open_source("re10k", root=str(write_re10k(tmp_path, truth, jpegs=jpegs)), image_size=S)
    assert src.views(0, [0]).images.shape == (1, 3, S, S)
    with pytest.raises(DataError) as error:
        src.views(0, [1])
    one_line(error, "000000.torch", SCENE, "frame 1", "cannot decode image")


def test_camera_row_of_wrong_length_is_named(tmp_path, truth):
    rows = torch.zeros(VIEWS, 17)
    src = open_source("re10k", root=str(write_re10k(tmp_path, truth, cameras=rows)), image_size=S)
    with pytest.raises(DataError) as error:
        src[0]
    one_line(error, SCENE, "(4, 17)", "[N,18]")


def test_bad_lvsm_matrix_and_view_index_are_named(tmp_path, truth):
    root = write_lvsm(tmp_path, truth)
    src = open_source("lvsm_json", root=str(root), image_size=S)
    with pytest.raises(DataError) as error:
        src.views(0, [0, VIEWS])
    one_line(error, SCENE, f"view index {VIEWS} out of range", f"has {VIEWS} views")
    meta = root / "metadata" / f"{SCENE}.json"
    data = json.loads(meta.read_text())
    data["frames"][3]["w2c"] = [[1, 0, 0], [0, 1, 0]]
    meta.write_text(json.dumps(data))
    with pytest.raises(DataError) as error:
        open_source("lvsm_json", root=str(root))[0]
    one_line(error, f"{SCENE}.json", "frame 3", "'w2c' has shape (2, 3)", "4x4")


def test_missing_dataset_says_what_to_provide(tmp_path):
    with pytest.raises(DataError) as error:
        open_source("re10k", root=str(tmp_path / "nowhere"))
    one_line(error, "index.json", "not bundled")
    with pytest.raises(DataError) as error:
        open_source("transforms_json", root=str(tmp_path))
    one_line(error, "transforms.json", str(tmp_path))
