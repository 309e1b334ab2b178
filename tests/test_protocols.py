"""Evaluation protocols against the official rules: LVSM's loader (`data/dataset_scene.py`) and
pixelSplat's `rescale_and_crop`, on RealEstate10K-sized and portrait frames, through the sources
and an evaluation whose table flags a scene scored at another size."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from formats import Capture, image_bytes, write_lvsm, write_re10k
from harness.data import DataError, get_protocol, open_source
from harness.errors import ConfigError
from harness.schema import RunOptions, load_experiment, run_spec


def frame(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255


def official_lvsm(array: np.ndarray, k: list[float], size: int = 256, patch: int = 8):
    """The official loader's steps, written from its description (reference-facts.md)."""
    h, w = array.shape[:2]
    resize_w = int(size / h * w)
    resize_w = int(round(resize_w / patch) * patch)
    image = Image.fromarray(array).resize((resize_w, size), Image.LANCZOS)
    side = min(size, resize_w)
    top, left = (size - side) // 2, (resize_w - side) // 2
    image = np.array(image.crop((left, top, left + side, top + side))) / 255.0
    fx, fy, cx, cy = k
    rx, ry = resize_w / w, size / h
    return (torch.from_numpy(image).permute(2, 0, 1).float(),
            torch.tensor([fx * rx, fy * ry, cx * rx - left, cy * ry - top]), resize_w, left)


K = [500.0, 505.0, 321.5, 178.25]


def test_lvsm_gives_a_640x360_frame_456_columns_and_crops_from_x_100():
    array = frame(640, 360)
    out = get_protocol("lvsm").frame(as_tensor(array), torch.tensor(K), 256, 8)
    image, k, width, left = official_lvsm(array, K)
    assert (width, left) == (456, 100) and out.resized == (256, 456) and out.crop == (0, 100)
    assert out.image.shape == (3, 256, 256) and torch.equal(out.image, image)
    # Intrinsics: fx, cx by 456 / 640, fy, cy by 256 / 360, then cx - 100.
    expected = torch.tensor([500 * 456 / 640, 505 * 256 / 360, 321.5 * 456 / 640 - 100, 178.25 * 256 / 360])
    assert torch.allclose(out.fxfycxcy, expected, rtol=0, atol=1e-4) and torch.allclose(out.fxfycxcy, k, rtol=0, atol=1e-4)


def test_pixelsplat_gives_455_columns_from_x_99_and_keeps_the_normalized_principal_point():
    array = frame(640, 360)
    out = get_protocol("pixelsplat").frame(as_tensor(array), torch.tensor(K), 256, 8)
    assert out.resized == (256, 455) and out.crop == (0, 99)
    reference = np.asarray(Image.fromarray(array).resize((455, 256), Image.LANCZOS))[:, 99:355] / 255.0
    assert torch.equal(out.image, torch.from_numpy(reference).permute(2, 0, 1).float())
    expected = torch.tensor([500 / 640 * 455, 505 / 360 * 256, 321.5 / 640 * 256, 178.25 / 360 * 256])
    assert torch.allclose(out.fxfycxcy, expected, rtol=0, atol=1e-4)


def test_lvsm_scores_a_portrait_frame_at_the_official_144_square_and_the_scene_says_so(tmp_path):
    array = frame(270, 480, seed=1)
    k = [300.0, 300.0, 135.0, 240.0]
    out = get_protocol("lvsm").frame(as_tensor(array), torch.tensor(k), 256, 8)
    image, expected_k, width, _ = official_lvsm(array, k)
    assert width == 144 and out.image.shape == (3, 144, 144) and torch.equal(out.image, image)
    assert torch.allclose(out.fxfycxcy, expected_k, rtol=0, atol=1e-4)
    assert out.crop == (56, 0)  # the height 256 is cut to 144 from row 56
    capture = Capture(as_tensor(array)[None].repeat(3, 1, 1, 1), _cameras(3), torch.tensor(k).repeat(3, 1), "tall")
    scene = open_source("lvsm_json", root=str(write_lvsm(tmp_path, capture)), image_size=256).views(0, [0, 1])
    assert scene.images.shape == (2, 3, 144, 144)
    assert any("scored at 144x144 instead of 256x256" in note and "270x480" in note for note in scene.notes)


def _cameras(views: int) -> torch.Tensor:
    c2w = torch.eye(4).repeat(views, 1, 1)
    c2w[:, :3, 3] = torch.tensor([[0.3 * j, 0.1, -2.0] for j in range(views)])
    return c2w


def test_re10k_chunk_of_640x360_jpegs_loads_as_the_official_loader_reads_them(tmp_path):
    """A chunk's normalized intrinsics become pixels with the decoded frame's size, then the protocol."""
    arrays = [frame(640, 360, seed=s) for s in range(3)]
    jpegs = [image_bytes(as_tensor(a), "JPEG") for a in arrays]
    k = torch.tensor(K).repeat(3, 1)
    capture = Capture(torch.stack([as_tensor(a) for a in arrays]), _cameras(3), k, "room")
    src = open_source("re10k", root=str(write_re10k(tmp_path, capture, jpegs=jpegs)), image_size=256)
    scene = src.views(0, [0, 2])
    for view, j in enumerate((0, 2)):
        decoded = np.asarray(Image.open(io.BytesIO(jpegs[j])).convert("RGB"))
        image, expected_k, _, _ = official_lvsm(decoded, K)
        assert torch.equal(scene.images[view], image)
        assert (scene.fxfycxcy[view] - expected_k).abs().max() <= 1e-4 * expected_k[0]
    assert scene.notes == []


def test_protocol_is_a_named_data_key_and_bad_names_are_refused(tmp_path):
    with pytest.raises(DataError, match="option 'protocol'"):
        open_source("re10k", root=str(tmp_path), protocol="lvsm2")
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({"kind": "evaluate", "models": [{"name": "lvsm_decoder_only", "preset": "tiny"}],
                                    "data": {"source": "synthetic_scene", "protocol": "lvsm2"}}))
    with pytest.raises(ConfigError, match="data.protocol: unknown evaluation protocol 'lvsm2'"):
        load_experiment(path)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::harness.metrics.LPIPSUnavailableWarning")
def test_evaluation_table_states_its_protocol_and_counts_scenes_scored_at_another_size(tmp_path, monkeypatch):
    monkeypatch.setenv("LVSM_BENCH_CODE_VERSION", "test")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    wide = [as_tensor(frame(48, 27, seed=s)) for s in range(4)]     # landscape: 32 rows, cropped square
    tall = [as_tensor(frame(27, 48, seed=s)) for s in range(4)]     # portrait: int(32 / 48 * 27) = 18 -> 16
    k_wide, k_tall = torch.tensor([40.0, 40.0, 24.0, 13.5]), torch.tensor([40.0, 40.0, 13.5, 24.0])
    root = tmp_path / "data"
    write_lvsm(root / "a", Capture(torch.stack(wide), _cameras(4), k_wide.repeat(4, 1), "wide"))
    write_lvsm(root / "b", Capture(torch.stack(tall), _cameras(4), k_tall.repeat(4, 1), "tall"))
    (root / "full_list.txt").write_text(f"{root}/a/metadata/wide.json\n{root}/b/metadata/tall.json\n")
    spec = {"kind": "evaluate", "name": "protocol_test", "output_dir": str(tmp_path / "out"),
            "models": [{"name": "lvsm_decoder_only", "preset": "tiny"}],
            "data": {"source": "lvsm_json", "options": {"root": str(root), "image_size": 32, "span": [2, 3]},
                     "protocol": "lvsm", "n_input": 2, "n_target": 1}, "grid_scenes": 0}
    path = tmp_path / "protocol_test.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = run_spec(load_experiment(path), RunOptions(progress=False))
    row = result.summary.iloc[0]
    assert (row["scenes"], row["flagged"]) == (2, 1)
    per_scene = result.per_scene.set_index("scene")
    assert per_scene.loc["tall", "scored_px"] == "16x16" and per_scene.loc["tall", "flag"] == "scored at 16x16"
    assert per_scene.loc["wide", "scored_px"] == "32x32" and not per_scene.loc["wide", "flag"]
    table = (tmp_path / "out" / "summary.md").read_text()
    assert "Evaluation protocol lvsm: LVSM/Efficient-LVSM loader" in table
    assert "1 scene(s) scored at another size than 32x32" in table and "tall (scored at 16x16)" in table
    assert math.isfinite(row["psnr"])
