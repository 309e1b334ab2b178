"""harness.data: synthetic sources, camera conventions, samplers and the evaluation index."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from formats import WRITERS, random_capture, write_source
from harness.data import (BATCH_KEYS, DataError, TrainingStream, collate, evaluation_examples, list_sources,
                          load_evaluation_index, make_evaluation_index, normalize_poses, open_source,
                          save_evaluation_index, training_examples)
from harness.data.registry import source_options
from harness.data.source import FAMILIES
from models.rays import pixel_rays

FIXTURES = Path(__file__).parent / "fixtures"
REAL_INDEX = Path(__file__).resolve().parents[2] / "shared" / "data" / "evaluation_index_re10k.json"


def project(points: torch.Tensor, c2w: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World points [P,3] -> continuous pixel coordinates [P,2] (pixel (row i, col j) has its centre at
    (j+0.5, i+0.5)) and camera-space depth z [P]."""
    cam = (points - c2w[:3, 3]) @ c2w[:3, :3]
    z = cam[:, 2]
    return torch.stack([k[0] * cam[:, 0] / z + k[2], k[1] * cam[:, 1] / z + k[3]], -1), z


def surface_points(src, i: int, view: int) -> tuple[torch.Tensor, torch.Tensor]:
    """World points seen at each pixel centre of a view (from the renderer's exact ray distance) and
    the flat pixel index of each."""
    scene = src.views(i, [view])
    depth = src.depth(i, [view])[0]
    o, d = pixel_rays(scene.c2w[0], scene.fxfycxcy[0], *depth.shape)
    points = (o + depth * d).permute(1, 2, 0).reshape(-1, 3)
    keep = torch.isfinite(depth.reshape(-1))
    return points[keep], keep.nonzero()[:, 0]


def _open_small(name: str, root: Path):
    """Source `name` at 16 px: a source that reads files opens a one-scene dataset that tests/formats.py
    writes in its layout; one that makes its scenes (the synthetic ones) makes two."""
    if "root" in source_options(name):
        assert name in WRITERS, f"{name} reads files: tests/formats.py needs a writer of its layout"
        return open_source(name, root=str(write_source(name, root, random_capture(views=4, size=16))), image_size=16)
    return open_source(name, count=2, image_size=16)


@pytest.mark.parametrize("name", list_sources())
def test_every_registered_source_loads_valid_views(name, tmp_path):
    src = _open_small(name, tmp_path / name)
    assert len(src) >= 1 and len(src.names) == len(src) and src.family in FAMILIES
    last = src.num_views(0) - 1
    scene = src.views(0, [last, 0])
    assert scene.indices == [last, 0] and scene.name == src.names[0]
    assert scene.images.shape == (2, 3, 16, 16) and scene.images.dtype == torch.float32
    assert 0 <= scene.images.min() and scene.images.max() <= 1
    rot = scene.c2w[:, :3, :3]
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3).expand(2, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(2), atol=1e-5)  # right-handed, OpenCV
    assert torch.isfinite(scene.fxfycxcy).all() and (scene.fxfycxcy[:, :2] > 0).all()


def test_an_unknown_source_or_option_is_refused_naming_what_there_is():
    with pytest.raises(DataError, match="unknown data source 'shapenet'; registered: ") as error:
        open_source("shapenet")
    assert all(name in str(error.value) for name in list_sources())
    with pytest.raises(DataError, match="unknown option 'frames'"):
        open_source("synthetic_object", frames=3)


@pytest.mark.parity
def test_normalize_poses_matches_official_fixture():
    ref = torch.load(FIXTURES / "pose_normalization.pt", weights_only=True)
    out = normalize_poses(ref["input_c2w"], ref["scene_scale_factor"])
    assert torch.allclose(out, ref["output_c2w"], atol=1e-5)


@pytest.mark.parametrize("name", ["synthetic_object", "synthetic_scene"])
def test_synthetic_scene_layout_and_determinism(name):
    length = {"synthetic_object": {"views": 12}, "synthetic_scene": {"frames": 12}}[name]
    src = open_source(name, count=3, seed=7, image_size=32, **length)
    scene = src.views(1, [0, 5, 9])
    assert scene.images.shape == (3, 3, 32, 32) and scene.images.dtype == torch.float32
    assert 0 <= scene.images.min() and scene.images.max() <= 1
    assert scene.c2w.shape == (3, 4, 4) and scene.fxfycxcy.shape == (3, 4)
    rot = scene.c2w[:, :3, :3]
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(3), atol=1e-5)  # right-handed, OpenCV
    assert torch.allclose(scene.fxfycxcy[:, 2:], torch.tensor([16.0, 16.0]))
    again = open_source(name, count=3, seed=7, image_size=32, **length).views(1, [5])
    assert torch.equal(again.images[0], scene.images[1]) and torch.equal(again.c2w[0], scene.c2w[1])
    assert not torch.allclose(src.views(2, [5]).images, again.images)            # other scene
    assert not torch.allclose(open_source(name, count=3, seed=8, image_size=32, **length).views(1, [5]).images, again.images)
    assert src[0].images.shape[0] == src.num_views(0)
    assert scene.name == src.names[1] and scene.indices == [0, 5, 9]


@pytest.mark.parametrize("name", ["synthetic_object", "synthetic_scene"])
def test_views_are_textured_and_not_a_copy_of_the_inputs(name):
    src = open_source(name, count=3, seed=0, image_size=48)
    copy_errors, mean_errors = [], []
    for ex in itertools.islice(training_examples(src, n_input=2, n_target=4, seed=1), 3):
        images = torch.cat([ex.input_images, ex.target_images])
        assert (images.std(dim=(1, 2, 3)) > 0.08).all()
        # Texture: neighbouring pixels differ noticeably somewhere in every view.
        assert ((images[..., 1:] - images[..., :-1]).abs().amax(dim=(1, 2, 3)) > 0.3).all()
        copy_errors += [(ex.input_images - t).abs().mean(dim=(1, 2, 3)).min() for t in ex.target_images]
        mean_errors += [(ex.input_images.mean(0) - t).abs().mean() for t in ex.target_images]
    # Copying the closer input (or predicting their mean) leaves a clear error on average; single targets
    # right next to a context frame may be easy, as in RealEstate10K.
    assert torch.stack(copy_errors).mean() > 0.03 and torch.stack(mean_errors).mean() > 0.03


@pytest.mark.parametrize("name", ["synthetic_scene", "synthetic_object"])
def test_rendered_surface_points_reproject_consistently(name):
    """A surface point seen at a pixel centre of view A projects back onto that pixel centre of A, and
    into view B where B sees the same surface (same distance) with the same colour wherever it is not
    occluded: cameras, intrinsics and images agree."""
    src = open_source(name, count=2, seed=3, image_size=48)
    forward = src[0].c2w[:, :3, 2]
    a, b = 0, int((forward[1:] @ forward[0]).argmax()) + 1   # the view looking most like view 0 (~most overlap)
    scene = src.views(0, [a, b])
    points, flat = surface_points(src, 0, a)
    uv, z = project(points, scene.c2w[0], scene.fxfycxcy[0])
    expected = torch.stack([flat % 48 + 0.5, flat // 48 + 0.5], -1).float()
    assert (z > 0).all() and torch.allclose(uv, expected, atol=2e-3)

    uv_b, z_b = project(points, scene.c2w[1], scene.fxfycxcy[1])
    col, row = uv_b[:, 0].floor().long(), uv_b[:, 1].floor().long()
    inside = (z_b > 0) & (col >= 0) & (col < 48) & (row >= 0) & (row < 48)
    assert inside.float().mean() > 0.3
    depth_b = src.depth(0, [b])[0]
    seen = depth_b[row[inside], col[inside]]
    predicted = (points[inside] - scene.c2w[1, :3, 3]).norm(dim=-1)
    visible = (seen - predicted).abs() < 0.03 * predicted
    assert visible.float().mean() > 0.6
    colour_a = scene.images[0].reshape(3, -1)[:, flat[inside][visible]]
    colour_b = scene.images[1][:, row[inside][visible], col[inside][visible]]
    shuffled = colour_b[:, torch.randperm(colour_b.shape[1], generator=torch.Generator().manual_seed(0))]
    matched, unmatched = (colour_a - colour_b).abs().mean(), (colour_a - shuffled).abs().mean()
    assert matched < 0.5 * unmatched


def test_scene_sampler_uses_a_span_with_targets_between():
    src = open_source("synthetic_scene", count=4, seed=0, image_size=16, frames=40, span=(8, 20))
    for ex in itertools.islice(training_examples(src, n_input=2, n_target=5, seed=3), 12):
        start, end = ex.input_indices
        assert 8 <= end - start <= 20
        assert all(start < t < end for t in ex.target_indices) and len(set(ex.target_indices)) == 5
    many = next(training_examples(src, n_input=4, n_target=2, seed=0))
    assert many.input_indices == sorted(many.input_indices) and len(set(many.input_indices)) == 4


def test_object_sampler_draws_distinct_random_views():
    src = open_source("synthetic_object", count=2, seed=0, image_size=16, views=12)
    ex = next(training_examples(src, n_input=3, n_target=5, seed=0))
    assert len(set(ex.input_indices + ex.target_indices)) == 8
    first = [e.input_indices + e.target_indices for e in itertools.islice(training_examples(src, 3, 5, seed=4), 4)]
    second = [e.input_indices + e.target_indices for e in itertools.islice(training_examples(src, 3, 5, seed=4), 4)]
    assert first == second


def test_normalize_is_computed_over_inputs_and_targets_together():
    src = open_source("synthetic_scene", count=1, seed=0, image_size=16)
    raw = next(training_examples(src, 2, 3, seed=5, normalize=False))
    ex = next(training_examples(src, 2, 3, seed=5, normalize=True))
    joint = normalize_poses(torch.cat([raw.input_c2w, raw.target_c2w]))
    assert torch.allclose(torch.cat([ex.input_c2w, ex.target_c2w]), joint, atol=1e-6)
    assert torch.isclose(joint[:, :3, 3].abs().max(), torch.tensor(1 / 1.35))
    assert torch.equal(ex.target_images, raw.target_images)


def test_collate_stacks_the_call_contract():
    src = open_source("synthetic_object", count=2, seed=0, image_size=16)
    batch = collate(list(itertools.islice(training_examples(src, 2, 3, seed=0), 2)))
    assert set(batch) == set(BATCH_KEYS) | {"scene"}
    assert batch["input_images"].shape == (2, 2, 3, 16, 16) and batch["target_c2w"].shape == (2, 3, 4, 4)
    assert len(batch["scene"]) == 2
    loader = torch.utils.data.DataLoader(TrainingStream(src, 2, 1, seed=0), batch_size=3, collate_fn=collate)
    assert next(iter(loader))["target_fxfycxcy"].shape == (3, 1, 4)


def test_evaluation_index_roundtrip_and_protocol(tmp_path):
    src = open_source("synthetic_scene", count=3, seed=0, image_size=16)
    index = make_evaluation_index(src, n_input=2, n_target=3, seed=0)
    assert list(index) == src.names
    assert index == make_evaluation_index(src, n_input=2, n_target=3, seed=0)
    save_evaluation_index(index, tmp_path / "index.json")
    loaded = load_evaluation_index(tmp_path / "index.json")
    assert loaded == index
    examples = list(evaluation_examples(src, loaded))
    assert [e.scene for e in examples] == src.names
    assert [e.input_indices for e in examples] == [index[n]["context"] for n in src.names]

    loaded[src.names[1]] = None                       # protocol: null entries are skipped silently
    loaded["not_a_scene"] = {"context": [0, 1], "target": [2]}
    skipped: list[str] = []
    with pytest.warns(UserWarning, match="1 of 3 scenes are not in source 'synthetic_scene'"):
        examples = list(evaluation_examples(src, loaded, skipped=skipped))
    assert len(examples) == 2 and skipped == ["not_a_scene"]
    with pytest.raises(DataError, match="'not_a_scene' is not in source"):
        list(evaluation_examples(src, loaded, strict=True))
    with pytest.raises(DataError, match=rf"scene '{src.names[0]}': view index 64 out of range; the scene has 64 views"):
        list(evaluation_examples(src, {src.names[0]: {"context": [0, 64], "target": [3]}}))


@pytest.mark.parametrize("text,match", [
    ("[1, 2]", "expected a JSON object keyed by scene"),
    ('{"a": {"context": [0, 1]}}', "scene 'a': expected null or an object with exactly the keys"),
    ('{"a": {"context": [0, -1], "target": [2]}}', "scene 'a': 'context' must be a non-empty list"),
    ("{not json", "not valid JSON"),
])
def test_bad_evaluation_index_names_file_and_scene(tmp_path, text, match):
    path = tmp_path / "index.json"
    path.write_text(text)
    with pytest.raises(DataError, match=match) as error:
        load_evaluation_index(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.skipif(not REAL_INDEX.is_file(), reason=f"{REAL_INDEX} not present")
def test_real_re10k_evaluation_index_parses():
    index = load_evaluation_index(REAL_INDEX)
    assert len(index) == 7194 and sum(v is not None for v in index.values()) == 6474
    entry = next(v for v in index.values() if v is not None)
    assert len(entry["context"]) == 2 and len(entry["target"]) == 3


def test_preview_command_writes_a_png_grid(tmp_path):
    import numpy as np
    from PIL import Image

    from harness.cli import main
    out = tmp_path / "preview.png"
    assert main(["preview", "--out", str(out), "--scenes", "1", "--views", "3", "--size", "16"]) == 0
    image = Image.open(out)
    assert image.size == (3 * 18, 2 * (16 + 14))     # 3 views + gaps wide; 2 sources x (label + row) high
    assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 20   # rendered content, not a blank canvas


def test_object_texture_freq_and_background_options():
    from harness.data import open_source
    plain = open_source("synthetic_object", count=1, image_size=24, views=2)
    default = open_source("synthetic_object", count=1, image_size=24, views=2, texture_freq=[2.0, 5.0], background=1.0)
    assert torch.equal(plain[0].images, default[0].images)  # the defaults are the original source
    solid = open_source("synthetic_object", count=1, image_size=24, views=2, texture_freq=[0, 0], background=0.5)
    depth = solid.depth(0, [0])[0]
    image = solid[0].images[0]
    assert torch.allclose(image[:, depth.isinf()], torch.tensor(0.5))  # the background grey level
    assert not torch.equal(image, plain[0].images[0])
    with pytest.raises(ValueError, match="texture_freq"):
        open_source("synthetic_object", texture_freq=[3.0, 1.0])
    with pytest.raises(ValueError, match="background"):
        open_source("synthetic_object", background=2.0)
