"""harness.data on-disk formats (writers in tests/formats.py): one rendered scene with known cameras,
written in each layout (RealEstate10K .torch chunks with JPEG bytes, LVSM metadata/*.json + PNGs,
transforms.json + PNGs) and loaded back through `open_source` with the same cameras and pixels;
images resampled as the protocol does; and every bad file, camera or option refused in one line that
names the file, scene, frame or option and what was expected."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_one_line
from formats import (WRITERS, Capture, image_bytes, random_capture, set_key, write_lvsm, write_opencv_cameras, write_re10k,
                     write_transforms)
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
    off-centre principal point), and the world that renders it."""
    src = SyntheticScenes(count=1, seed=3, image_size=S, frames=16)
    world = src.world(0)
    c2w = src.cameras(0, [0, 4, 8, 12])
    k = torch.tensor([72.0, 75.0, W / 2 + 3.0, H / 2 - 2.0]).repeat(VIEWS, 1)
    images, _ = world.render(c2w, k, (H, W))
    return {"world": world, "capture": Capture(images, c2w, k, SCENE)}


def test_every_format_loads_the_same_cameras_and_pixels(tmp_path, truth):
    capture = truth["capture"]
    write_transforms(tmp_path / "tj" / SCENE, capture)
    sources = {
        "re10k": open_source("re10k", root=str(write_re10k(tmp_path / "re10k", capture)), image_size=S),
        "lvsm_json": open_source("lvsm_json", root=str(write_lvsm(tmp_path / "lvsm", capture)), image_size=S),
        "transforms_json": open_source("transforms_json", root=str(tmp_path / "tj"), image_size=S),
        "opencv_cameras": open_source("opencv_cameras", root=str(write_opencv_cameras(tmp_path / "oc" / SCENE, capture).parent),
                                      image_size=S),
    }
    # Where a pixel of the original frame lands after resize-to-height + centre crop.
    scale = S / H
    left = (round(W * scale) - S) // 2
    points = torch.tensor([[0.3, 0.8, -1.0], [-1.0, 0.5, -2.0], [1.2, 1.5, -1.5], [0.0, 1.2, -0.5]])
    for name, src in sources.items():
        assert src.names == [SCENE] and src.num_views(0) == VIEWS
        scene = src[0]
        assert scene.images.shape == (VIEWS, 3, S, S)
        assert torch.allclose(scene.c2w, capture.c2w, atol=1e-5), name
        for j in range(VIEWS):
            expected = project(points, capture.c2w[j], capture.k[j]) * scale - torch.tensor([left, 0.0])
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
    assert torch.allclose(sources["opencv_cameras"][0].images, lossless[0], atol=1e-6)
    assert (sources["re10k"][0].images - lossless[0]).abs().mean() < 0.02     # JPEG vs PNG


def test_transforms_json_camera_angles_give_the_same_intrinsics(tmp_path, truth, caplog):
    write_transforms(tmp_path / SCENE, truth["capture"], "angles")
    src = open_source("transforms_json", root=str(tmp_path), image_size=None)
    scene = src.views(0, [1])
    k = truth["capture"].k[1]
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
    src = open_source("lvsm_json", root=str(write_lvsm(tmp_path, truth["capture"])), image_size=32, span=(2, 3))
    (ex,) = evaluation_examples(src, {SCENE: {"context": [0, 3], "target": [1, 2]}})
    assert ex.input_images.shape == (2, 3, 32, 32) and ex.target_indices == [1, 2]
    copy = pickle.loads(pickle.dumps(src))            # DataLoader workers may receive sources by pickle
    assert torch.equal(copy.views(0, [1]).images, ex.target_images[:1])


# --- loaders: resampling as the protocol does it --------------------------------------------------

def test_loaded_images_are_resized_with_pil_lanczos_then_centre_cropped(tmp_path):
    """Both protocols resize 8-bit images with PIL's LANCZOS; they differ in the resized width."""
    root = write_transforms(tmp_path, random_capture(), cx=12.0, cy=8.0, edit=lambda data: [data.pop(k) for k in "wh"])
    wide = np.random.default_rng(7).integers(0, 256, (24, 40, 3), dtype=np.uint8)   # 24 rows x 40 columns
    (root / "images" / "000.png").write_bytes(image_bytes(torch.from_numpy(wide).permute(2, 0, 1) / 255))
    original = Image.fromarray(wide)
    # lvsm: int(16 / 24 * 40) = 26, rounded to the patch multiple 8 -> 24; pixelsplat: round(26.67) = 27.
    for protocol, width in (("lvsm", 24), ("pixelsplat", 27)):
        scene = open_source("transforms_json", root=str(root), image_size=SIZE, protocol=protocol).views(0, [0])
        reference = np.asarray(original.resize((width, SIZE), Image.LANCZOS), dtype=np.float32) / 255
        left = (width - SIZE) // 2
        assert torch.equal(scene.images[0], torch.from_numpy(reference[:, left:left + SIZE]).permute(2, 0, 1)), protocol
    lvsm = open_source("transforms_json", root=str(root), image_size=SIZE).views(0, [0])
    assert torch.allclose(lvsm.fxfycxcy[0], torch.tensor([20 * 24 / 40, 20 * SIZE / 24, 12 * 24 / 40 - 4, 8 * SIZE / 24]))


def test_opencv_cameras_resize_rgba_first_then_composite_on_white(tmp_path):
    """LaCT's loader: LANCZOS on the RGBA image (cover, centre crop), then paste onto white with the
    alpha as mask. Compositing first, as the other sources do, gives other edge pixels."""
    capture = random_capture(views=1, size=24)
    alpha = torch.zeros(1, 24, 24)
    alpha[:, 6:18, 4:20] = 1.0
    alpha[:, 6:18, 12] = 0.5
    root = write_opencv_cameras(tmp_path / "obj", capture, alpha)
    scene = open_source("opencv_cameras", root=str(root), image_size=SIZE)[0]
    rgba = Image.open(root / "renderings" / "00000000_rgba.png")
    assert rgba.mode == "RGBA"
    resized = rgba.resize((SIZE, SIZE), Image.LANCZOS)
    white = Image.new("RGB", resized.size, (255, 255, 255))
    white.paste(resized, mask=resized.split()[-1])
    expected = torch.from_numpy(np.asarray(white, dtype=np.float32) / 255).permute(2, 0, 1)
    assert torch.equal(scene.images[0], expected)
    assert scene.images[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0]                 # transparent -> white
    flat = Image.new("RGB", rgba.size, (255, 255, 255))
    flat.paste(rgba, mask=rgba.split()[-1])
    composited_first = torch.from_numpy(np.asarray(flat.resize((SIZE, SIZE), Image.LANCZOS), dtype=np.float32) / 255)
    assert (composited_first.permute(2, 0, 1) - scene.images[0]).abs().max() > 1 / 255
    assert torch.allclose(scene.fxfycxcy[0], capture.k[0] * SIZE / 24)
    assert torch.allclose(scene.c2w[0], capture.c2w[0], atol=1e-6)


def test_opencv_cameras_bad_views_are_named(tmp_path):
    root = write_opencv_cameras(tmp_path / "obj", random_capture(views=2))
    views = json.loads((root / "opencv_cameras.json").read_text())
    del views[1]["w2c"]
    (root / "opencv_cameras.json").write_text(json.dumps(views))
    with pytest.raises(DataError) as error:
        open_source("opencv_cameras", root=str(root)).num_views(0)
    assert_one_line(error, "opencv_cameras.json", "view 1", "missing key 'w2c'")
    (root / "opencv_cameras.json").write_text(json.dumps({"frames": []}))
    with pytest.raises(DataError) as error:
        open_source("opencv_cameras", root=str(root)).num_views(0)
    assert_one_line(error, "expected a non-empty JSON list of view objects")
    with pytest.raises(DataError) as error:
        open_source("opencv_cameras", root=str(tmp_path / "nothing"))
    assert_one_line(error, "no opencv_cameras.json", "LaCT's layout")


# --- bad input: one-line errors naming the file/scene and what was expected ---------------------------
SIZE = 16  # the random captures' size


def test_missing_image_is_named(tmp_path, truth):
    root = write_lvsm(tmp_path / "lvsm", truth["capture"])
    (root / "images" / SCENE / "00002.png").unlink()
    src = open_source("lvsm_json", root=str(root), image_size=S)
    src.views(0, [0, 1])
    with pytest.raises(DataError) as error:
        src.views(0, [2])
    assert_one_line(error, f"{SCENE}.json", "frame 2", "00002.png", "not found")



def test_transforms_json_leaves_out_frames_without_images(tmp_path, truth, caplog):
    """instant-ngp's fox lists 67 frames and ships 50 images: frames without an image are left out with
    one warning that counts them; only a file with no image at all is an error."""
    root = tmp_path / "tj"
    write_transforms(root / SCENE, truth["capture"])
    for j in (1, 2):
        (root / SCENE / "images" / f"00{j}.png").unlink()
    src = open_source("transforms_json", root=str(root), image_size=S)
    assert src.num_views(0) == VIEWS - 2
    scene = src[0]
    assert torch.allclose(scene.c2w, truth["capture"].c2w[[0, 3]], atol=1e-5)      # frames 0 and 3, in file order
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "2 of 4 frames have no image file" in warned[0] and "transforms.json" in warned[0]
    for j in (0, 3):
        (root / SCENE / "images" / f"00{j}.png").unlink()
    with pytest.raises(DataError) as error:
        open_source("transforms_json", root=str(root))[0]
    assert_one_line(error, "transforms.json", "none of its 4 frames has its image file", "./images/000")


def test_corrupt_jpeg_is_named(tmp_path, truth):
    jpegs = [image_bytes(im, "JPEG") for im in truth["capture"].images]
    jpegs[1] = jpegs[1][: len(jpegs[1]) // 3]
    src = open_source("re10k", root=str(write_re10k(tmp_path, truth["capture"], jpegs=jpegs)), image_size=S)
    assert src.views(0, [0]).images.shape == (1, 3, S, S)
    with pytest.raises(DataError) as error:
        src.views(0, [1])
    assert_one_line(error, "000000.torch", SCENE, "frame 1", "cannot decode image")


def test_camera_row_of_wrong_length_is_named(tmp_path, truth):
    rows = torch.zeros(VIEWS, 17)
    src = open_source("re10k", root=str(write_re10k(tmp_path, truth["capture"], cameras=rows)), image_size=S)
    with pytest.raises(DataError) as error:
        src[0]
    assert_one_line(error, SCENE, "(4, 17)", "[N,18]")


def test_bad_lvsm_matrix_and_view_index_are_named(tmp_path, truth):
    root = write_lvsm(tmp_path, truth["capture"])
    src = open_source("lvsm_json", root=str(root), image_size=S)
    with pytest.raises(DataError) as error:
        src.views(0, [0, VIEWS])
    assert_one_line(error, SCENE, f"view index {VIEWS} out of range", f"has {VIEWS} views")
    meta = root / "metadata" / f"{SCENE}.json"
    data = json.loads(meta.read_text())
    data["frames"][3]["w2c"] = [[1, 0, 0], [0, 1, 0]]
    meta.write_text(json.dumps(data))
    with pytest.raises(DataError) as error:
        open_source("lvsm_json", root=str(root))[0]
    assert_one_line(error, f"{SCENE}.json", "frame 3", "'w2c' has shape (2, 3)", "4x4")


def test_missing_dataset_says_what_to_provide(tmp_path):
    with pytest.raises(DataError) as error:
        open_source("re10k", root=str(tmp_path / "nowhere"))
    assert_one_line(error, "index.json", "not bundled")
    with pytest.raises(DataError) as error:
        open_source("transforms_json", root=str(tmp_path))
    assert_one_line(error, "transforms.json", str(tmp_path))


@pytest.mark.parametrize("edit,needles", [
    (set_key(["frames", 2, "transform_matrix", 0, 3], float("nan")), ["frame 2", "'transform_matrix' holds NaN"]),
    (set_key(["frames", 1, "transform_matrix", 1, 1], float("inf")), ["frame 1", "'transform_matrix' holds NaN or Infinity"]),
    (set_key(["frames", 3, "transform_matrix", 2], [0.0, 1.0]), ["frame 3", "'transform_matrix' has rows of different lengths"]),
    (set_key(["frames", 0, "transform_matrix", 0, 0], "one"), ["frame 0", "'transform_matrix' holds a value that is not a number"]),
    (set_key(["frames", 0, "transform_matrix"], [[0.0] * 4] * 4), ["frame 0", "singular"]),
    (set_key(["fl_x"], float("nan")), ["frame 0", "'fl_x' is nan; expected a finite number"]),
    (set_key(["fl_y"], "20"), ["frame 0", "'fl_y' is '20'; expected a finite number"]),
    (set_key(["frames", 1, "fl_x"], -3.0), ["frame 1", "'fl_x' is -3.0; expected a positive number"]),
    (set_key(["k1"], "big"), ["'k1' is 'big'"]),
])
def test_transforms_json_refuses_bad_cameras(tmp_path, edit, needles):
    src = open_source("transforms_json", root=str(write_transforms(tmp_path, random_capture(), edit=edit)), image_size=None)
    with pytest.raises(DataError) as error:
        src[0]
    assert_one_line(error, str(tmp_path / "transforms.json"), *needles)


def test_one_nan_pose_is_refused_rather_than_spread_to_every_view(tmp_path):
    """Poses are normalised over the whole scene, so one NaN pose would make every view NaN."""
    root = write_transforms(tmp_path, random_capture(), edit=set_key(["frames", 3, "transform_matrix", 0, 3], float("nan")))
    src = open_source("transforms_json", root=str(root), image_size=None)
    with pytest.raises(DataError, match="frame 3"):
        list(evaluation_examples(src, {root.name: {"context": [0, 1], "target": [2]}}))


@pytest.mark.parametrize("edit,needles", [
    (set_key(["frames", 1, "fxfycxcy", 0], float("nan")), ["frame 1", "'fxfycxcy' holds NaN"]),
    (set_key(["frames", 1, "fxfycxcy"], [20.0, 20.0, 8.0]), ["frame 1", "'fxfycxcy' has shape (3,)"]),
    (set_key(["frames", 2, "fxfycxcy"], [0.0, 20.0, 8.0, 8.0]), ["frame 2", "expected fx, fy > 0"]),
    (set_key(["frames", 2, "fxfycxcy"], ["20", 20.0, 8.0, 8.0]), ["frame 2", "'fxfycxcy' holds a value that is not a number"]),
    (set_key(["frames", 3, "w2c", 2, 2], float("-inf")), ["frame 3", "'w2c' holds NaN or Infinity"]),
    (set_key(["frames", 0, "w2c"], [[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]]), ["frame 0", "singular"]),
])
def test_lvsm_json_refuses_bad_cameras(tmp_path, edit, needles):
    src = open_source("lvsm_json", root=str(write_lvsm(tmp_path, random_capture(), edit)), image_size=None)
    with pytest.raises(DataError) as error:
        src[0]
    assert_one_line(error, str(tmp_path / "metadata" / "s.json"), *needles)


@pytest.mark.parametrize("row,column,value,needles", [
    (2, 0, float("nan"), ["frame 2", "NaN or Infinity"]),
    (1, 9, float("inf"), ["frame 1", "NaN or Infinity"]),
    (3, 1, 0.0, ["frame 3", "expected fx, fy > 0"]),
])
def test_re10k_refuses_bad_camera_rows(tmp_path, row, column, value, needles):
    capture = random_capture()
    cameras = torch.load(write_re10k(tmp_path / "ok", capture) / "test" / "000000.torch", weights_only=True)[0]["cameras"]
    cameras[row, column] = value
    src = open_source("re10k", root=str(write_re10k(tmp_path / "bad", capture, cameras)), image_size=None)
    with pytest.raises(DataError) as error:
        src[0]
    assert_one_line(error, "000000.torch", "'s'", *needles)


# --- data source options ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,options,option", [
    ("synthetic_object", {"count": -1}, "count"),
    ("synthetic_object", {"count": 0}, "count"),
    ("synthetic_object", {"views": -2}, "views"),
    ("synthetic_object", {"image_size": 0}, "image_size"),
    ("synthetic_object", {"supersample": -1}, "supersample"),
    ("synthetic_object", {"fov_degrees": 0}, "fov_degrees"),
    ("synthetic_object", {"radius": -1.0}, "radius"),
    ("synthetic_object", {"count": 2.5}, "count"),
    ("synthetic_scene", {"frames": -3}, "frames"),
    ("synthetic_scene", {"span": [5, 2]}, "span"),
    ("synthetic_scene", {"seed": -1}, "seed"),
])
def test_bad_source_options_are_named(name, options, option):
    with pytest.raises(DataError) as error:
        open_source(name, **options)
    assert_one_line(error, name, f"option {option!r}")


@pytest.mark.parametrize("name,options,option", [
    ("re10k", {"cache_chunks": 0}, "cache_chunks"),
    ("re10k", {"image_size": -256}, "image_size"),
    ("lvsm_json", {"span": [0, 10]}, "span"),
    ("transforms_json", {"image_size": 0}, "image_size"),
    ("transforms_json", {"background": 2.0}, "background"),
    ("opencv_cameras", {"image_size": 0}, "image_size"),
    ("opencv_cameras", {"background": -1}, "background"),
])
def test_bad_options_of_real_sources_are_named(tmp_path, name, options, option):
    root = WRITERS[name](tmp_path / "data", random_capture())
    with pytest.raises(DataError) as error:
        open_source(name, root=str(root), **options)
    assert_one_line(error, name, f"option {option!r}")
