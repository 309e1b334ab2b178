"""Issue 11, the low layers: every bad input gets one clear line, nothing is silently wrong. Records
survive a torn line and never hold NaN tokens; models refuse non-finite cameras; loaders refuse
non-finite or malformed cameras and options, naming file, frame and option; official weights of
another variant, or with a missing block, are named; a file that is no checkpoint is one line."""
from __future__ import annotations

import ast
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import VARIANTS, load_fixture, random_views
from harness.checkpoint import load_checkpoint, save_checkpoint
from harness.data import DataError, open_source
from harness.errors import CheckpointError, HarnessError, MissingResource
from harness.records import RecordStore
from models import build_model, load_official

FIXTURES = Path(__file__).parent / "fixtures"
SIZE = 16
FRAMES = 4


def one_line(error: pytest.ExceptionInfo, *needles: str) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


# --- records ------------------------------------------------------------------------------------------

def test_append_after_a_torn_line_keeps_the_next_row(tmp_path):
    store = RecordStore(tmp_path / "rows.jsonl")
    store.append({"key": "a"})
    with store.path.open("a") as handle:  # a crash in the middle of writing a row
        handle.write('{"key": "lost", "latency')
    store.append({"key": "b"})
    store.append({"key": "c"})
    assert [row["key"] for row in store.rows()] == ["a", "b", "c"]


def test_records_hold_null_for_non_finite_values_and_say_which(tmp_path):
    store = RecordStore(tmp_path / "rows.jsonl")
    store.append({"key": "a", "psnr": float("nan"), "latency_ms": float("inf"), "ok": 1.5,
                  "per_view": [1.0, float("-inf")], "stats": {"mean": np.float32("nan"), "n": 3}})
    text = store.path.read_text()

    def refuse(token):
        raise AssertionError(f"{token} written into the records")
    row = json.loads(text, parse_constant=refuse)  # strict JSON: no NaN / Infinity tokens
    assert row["psnr"] is None and row["latency_ms"] is None and row["per_view"] == [1.0, None]
    assert row["stats"] == {"mean": None, "n": 3} and row["ok"] == 1.5
    assert row["non_finite"] == ["latency_ms", "per_view[1]", "psnr", "stats.mean"]
    store.append({"key": "b", "psnr": 20.0})
    assert "non_finite" not in store.rows()[-1]


# --- models: non-finite cameras --------------------------------------------------------------------

CAMERA_ARGS = {1: "input_c2w", 2: "input_fxfycxcy", 3: "target_c2w", 4: "target_fxfycxcy"}


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("position", sorted(CAMERA_ARGS))
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_models_refuse_non_finite_cameras(name, position, value):
    model = build_model(name, "tiny").eval()
    views = list(random_views(1, 2, 2))
    views[position] = views[position].clone()
    views[position][0, 1, 0] = value
    with torch.no_grad(), pytest.raises(ValueError, match=rf"^{CAMERA_ARGS[position]}: expected finite values"):
        model(*views)


def test_incremental_renderer_refuses_non_finite_cameras():
    model = build_model("efficient_lvsm", "tiny").eval()
    images, ic, ik, tc, tk = random_views(1, 2, 2)
    bad = tc.clone()
    bad[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="^target_c2w: expected finite values"):
        model.incremental(bad, tk, SIZE * 2, SIZE * 2)
    session = model.incremental(tc, tk, 32, 32)
    bad = ik.clone()
    bad[0, 0, 0] = float("inf")
    with torch.no_grad(), pytest.raises(ValueError, match="^fxfycxcy: expected finite values"):
        session.add_views(images, ic, bad)
    assert session.num_views == 0 and model.input_views_encoded == 0


def test_meta_tensors_pass_the_camera_check():
    with torch.device("meta"):
        model = build_model("efficient_lvsm", "tiny")
        out = model(*(t.to("meta") for t in random_views(1, 2, 1)))
    assert out.shape == (1, 1, 3, 32, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_camera_check_does_not_synchronise_cuda():
    model = build_model("efficient_lvsm", "tiny").cuda().eval()
    views = [t.cuda() for t in random_views(1, 2, 2)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            model(*views)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


# --- loaders: cameras in files -----------------------------------------------------------------------

def _png(seed: int, size: tuple[int, int] = (SIZE, SIZE)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _c2w(j: int) -> list[list[float]]:
    c2w = torch.eye(4)
    c2w[:3, 3] = torch.tensor([0.3 * j, 0.1, -2.0])
    return c2w.tolist()


def write_transforms(root: Path, edit=None, **top) -> Path:
    (root / "images").mkdir(parents=True)
    frames = []
    for j in range(FRAMES):
        (root / "images" / f"{j}.png").write_bytes(_png(j))
        frames.append({"file_path": f"images/{j}.png", "transform_matrix": _c2w(j)})
    data = {"fl_x": 20.0, "fl_y": 20.0, "cx": 8.0, "cy": 8.0, **top, "frames": frames}
    if edit:
        edit(data)
    (root / "transforms.json").write_text(json.dumps(data))
    return root


def write_lvsm(root: Path, edit=None) -> Path:
    (root / "metadata").mkdir(parents=True)
    (root / "images" / "s").mkdir(parents=True)
    frames = []
    for j in range(FRAMES):
        (root / "images" / "s" / f"{j}.png").write_bytes(_png(j))
        frames.append({"image_path": f"images/s/{j}.png", "fxfycxcy": [20.0, 20.0, 8.0, 8.0],
                       "w2c": torch.linalg.inv(torch.tensor(_c2w(j))).tolist()})
    data = {"scene_name": "s", "frames": frames}
    if edit:
        edit(data)
    (root / "metadata" / "s.json").write_text(json.dumps(data))
    return root


def write_re10k(root: Path, cameras: torch.Tensor | None = None) -> Path:
    root.mkdir(parents=True)
    w2c = torch.linalg.inv(torch.tensor([_c2w(j) for j in range(FRAMES)]))[:, :3].reshape(FRAMES, 12)
    rows = torch.cat([torch.tensor([1.25, 1.25, 0.5, 0.5]).repeat(FRAMES, 1), torch.zeros(FRAMES, 2), w2c], 1)
    rows = rows if cameras is None else cameras
    images = [torch.frombuffer(bytearray(_png(j)), dtype=torch.uint8) for j in range(FRAMES)]
    torch.save([{"key": "s", "url": "", "timestamps": torch.arange(FRAMES), "cameras": rows, "images": images}],
               root / "000000.torch")
    (root / "index.json").write_text(json.dumps({"s": "000000.torch"}))
    return root


def _set(path: list, value):
    def edit(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


@pytest.mark.parametrize("edit,needles", [
    (_set(["frames", 2, "transform_matrix", 0, 3], float("nan")), ["frame 2", "'transform_matrix' holds NaN"]),
    (_set(["frames", 1, "transform_matrix", 1, 1], float("inf")), ["frame 1", "'transform_matrix' holds NaN or Infinity"]),
    (_set(["frames", 3, "transform_matrix", 2], [0.0, 1.0]), ["frame 3", "'transform_matrix' has rows of different lengths"]),
    (_set(["frames", 0, "transform_matrix", 0, 0], "one"), ["frame 0", "'transform_matrix' holds a value that is not a number"]),
    (_set(["frames", 0, "transform_matrix"], [[0.0] * 4] * 4), ["frame 0", "singular"]),
    (_set(["fl_x"], float("nan")), ["frame 0", "'fl_x' is nan; expected a finite number"]),
    (_set(["fl_y"], "20"), ["frame 0", "'fl_y' is '20'; expected a finite number"]),
    (_set(["frames", 1, "fl_x"], -3.0), ["frame 1", "'fl_x' is -3.0; expected a positive number"]),
    (_set(["k1"], "big"), ["'k1' is 'big'"]),
])
def test_transforms_json_refuses_bad_cameras(tmp_path, edit, needles):
    src = open_source("transforms_json", root=str(write_transforms(tmp_path, edit)), image_size=None)
    with pytest.raises(DataError) as error:
        src[0]
    one_line(error, str(tmp_path / "transforms.json"), *needles)


def test_one_nan_pose_no_longer_spreads_to_every_view(tmp_path):
    """The defect: normalising poses over a scene with one NaN pose made every view NaN, silently."""
    from harness.data import evaluation_examples
    root = write_transforms(tmp_path, _set(["frames", 3, "transform_matrix", 0, 3], float("nan")))
    src = open_source("transforms_json", root=str(root), image_size=None)
    with pytest.raises(DataError, match="frame 3"):
        list(evaluation_examples(src, {root.name: {"context": [0, 1], "target": [2]}}))


@pytest.mark.parametrize("edit,needles", [
    (_set(["frames", 1, "fxfycxcy", 0], float("nan")), ["frame 1", "'fxfycxcy' holds NaN"]),
    (_set(["frames", 1, "fxfycxcy"], [20.0, 20.0, 8.0]), ["frame 1", "'fxfycxcy' has shape (3,)"]),
    (_set(["frames", 2, "fxfycxcy"], [0.0, 20.0, 8.0, 8.0]), ["frame 2", "expected fx, fy > 0"]),
    (_set(["frames", 2, "fxfycxcy"], ["20", 20.0, 8.0, 8.0]), ["frame 2", "'fxfycxcy' holds a value that is not a number"]),
    (_set(["frames", 3, "w2c", 2, 2], float("-inf")), ["frame 3", "'w2c' holds NaN or Infinity"]),
    (_set(["frames", 0, "w2c"], [[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]]), ["frame 0", "singular"]),
])
def test_lvsm_json_refuses_bad_cameras(tmp_path, edit, needles):
    src = open_source("lvsm_json", root=str(write_lvsm(tmp_path, edit)), image_size=None)
    with pytest.raises(DataError) as error:
        src[0]
    one_line(error, str(tmp_path / "metadata" / "s.json"), *needles)


@pytest.mark.parametrize("row,column,value,needles", [
    (2, 0, float("nan"), ["frame 2", "NaN or Infinity"]),
    (1, 9, float("inf"), ["frame 1", "NaN or Infinity"]),
    (3, 1, 0.0, ["frame 3", "expected fx, fy > 0"]),
])
def test_re10k_refuses_bad_camera_rows(tmp_path, row, column, value, needles):
    cameras = torch.load(write_re10k(tmp_path / "ok") / "000000.torch", weights_only=True)[0]["cameras"]
    cameras[row, column] = value
    src = open_source("re10k", root=str(write_re10k(tmp_path / "bad", cameras)), image_size=None)
    with pytest.raises(DataError) as error:
        src[0]
    one_line(error, "000000.torch", "'s'", *needles)


def test_good_tiny_captures_load(tmp_path):
    for name, root in (("transforms_json", write_transforms(tmp_path / "tj")), ("lvsm_json", write_lvsm(tmp_path / "lj")),
                       ("re10k", write_re10k(tmp_path / "re"))):
        scene = open_source(name, root=str(root), image_size=None)[0]
        assert scene.images.shape == (FRAMES, 3, SIZE, SIZE) and torch.isfinite(scene.c2w).all(), name


# --- loaders: resampling as the protocol does it --------------------------------------------------

def test_loaded_images_are_resized_with_pil_lanczos_then_centre_cropped(tmp_path):
    """pixelSplat's evaluation and LVSM's loader resize 8-bit images with PIL's LANCZOS."""
    root = write_transforms(tmp_path, cx=12.0, cy=8.0)
    wide = _png(7, size=(24, 40))   # 24 rows x 40 columns
    (root / "images" / "0.png").write_bytes(wide)
    scene = open_source("transforms_json", root=str(root), image_size=SIZE).views(0, [0])
    original = Image.open(io.BytesIO(wide)).convert("RGB")
    width = round(40 * SIZE / 24)   # 27
    reference = np.asarray(original.resize((width, SIZE), Image.LANCZOS), dtype=np.float32) / 255
    left = (width - SIZE) // 2
    expected = torch.from_numpy(reference[:, left:left + SIZE]).permute(2, 0, 1)
    assert torch.equal(scene.images[0], expected)
    # The crop semantics are unchanged: intrinsics scaled by the resize, shifted by the crop.
    scale = SIZE / 24
    assert torch.allclose(scene.fxfycxcy[0], torch.tensor([20 * width / 40, 20 * scale, 12 * width / 40 - left, 8 * scale]))


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
    one_line(error, name, f"option {option!r}")


@pytest.mark.parametrize("name,options,option", [
    ("re10k", {"cache_chunks": 0}, "cache_chunks"),
    ("re10k", {"image_size": -256}, "image_size"),
    ("lvsm_json", {"span": [0, 10]}, "span"),
    ("transforms_json", {"image_size": 0}, "image_size"),
    ("transforms_json", {"background": 2.0}, "background"),
])
def test_bad_options_of_real_sources_are_named(tmp_path, name, options, option):
    writer = {"re10k": write_re10k, "lvsm_json": write_lvsm, "transforms_json": write_transforms}[name]
    root = writer(tmp_path / "data")
    with pytest.raises(DataError) as error:
        open_source(name, root=str(root), **options)
    one_line(error, name, f"option {option!r}")


# --- official weights --------------------------------------------------------------------------------

@pytest.mark.parametrize("requested,weights,named", [
    ("lvsm_encoder_decoder", "lvsm_decoder_only", "lvsm_decoder_only"),
    ("efficient_lvsm", "lvsm_encoder_decoder", "lvsm_encoder_decoder"),
    ("lvsm_decoder_only", "efficient_lvsm", "efficient_lvsm"),
    ("efficient_lvsm_final_context", "lvsm_decoder_only", "lvsm_decoder_only"),
])
def test_load_official_names_the_variant_the_weights_belong_to(requested, weights, named):
    with pytest.raises(ValueError) as error:
        load_official(requested, None, load_fixture(weights)["state_dict"])
    one_line(error, f"these weights look like {named}", f"not {requested}")


def test_load_official_refuses_a_gap_in_the_blocks():
    state = {k: v for k, v in load_fixture("lvsm_decoder_only")["state_dict"].items()
             if not k.startswith("transformer_blocks.0.")}
    with pytest.raises(ValueError) as error:
        load_official("lvsm_decoder_only", None, state)
    one_line(error, "lack block transformer_blocks.0")


@pytest.mark.parametrize("dropped,missing", [
    ("self_cross_blocks.1.", "self_cross_blocks.1"),
    ("input_self_attn_blocks.1.", "input_self_attn_blocks.1"),
])
@pytest.mark.parametrize("strict", [True, False])
def test_load_official_names_a_stream_that_lost_its_last_block(dropped, missing, strict):
    state = {k: v for k, v in load_fixture("efficient_lvsm")["state_dict"].items() if not k.startswith(dropped)}
    with pytest.raises(ValueError) as error:
        load_official("efficient_lvsm", None, state, strict=strict)
    one_line(error, f"block {missing} is missing")


def _paper_listing(name: str) -> dict[str, torch.Tensor]:
    lines = (FIXTURES / f"keys_{name}.txt").read_text().strip().splitlines()[:-1]
    return {key: torch.empty(ast.literal_eval(shape), device="meta") for key, shape in (line.split("\t") for line in lines)}


@pytest.mark.parametrize("name,last", [("lvsm_decoder_only", "transformer_blocks.23"),
                                       ("lvsm_encoder_decoder", "transformer_decoder.11"),
                                       ("efficient_lvsm", "input_self_attn_blocks.11")])
def test_paper_size_weights_without_their_last_block_are_refused(name, last):
    """Without a config, a paper-width checkpoint that lost its last block used to load as a
    shallower model. (Weights on the meta device: the check runs before any model is built.)"""
    state = {k: v for k, v in _paper_listing(name).items() if not k.startswith(last + ".")}
    with pytest.raises(ValueError) as error:
        load_official(name, None, state)
    one_line(error, f"block {last} is missing", "give the official config")


# --- checkpoints -------------------------------------------------------------------------------------

@pytest.fixture()
def checkpoint(tmp_path):
    return save_checkpoint(tmp_path / "good.pt", build_model("lvsm_decoder_only", "tiny"), step=3)


@pytest.mark.parametrize("damage", ["text", "truncated", "empty", "pickle"])
def test_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path, checkpoint, damage):
    path = tmp_path / f"{damage}.pt"
    data = checkpoint.read_bytes()
    path.write_bytes({"text": b"model: efficient_lvsm\n", "truncated": data[: len(data) // 2], "empty": b"",
                      "pickle": b"\x80\x04K\x07."}[damage])
    for model_name in (None, "lvsm_decoder_only"):
        with pytest.raises(CheckpointError) as error:
            load_checkpoint(path, model_name)
        one_line(error, str(path), "not a readable torch checkpoint", "expected a complete file written by torch.save")


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(MissingResource) as error:
        load_checkpoint(tmp_path / "nowhere.pt")
    one_line(error, str(tmp_path / "nowhere.pt"), "not found")
    assert isinstance(error.value, FileNotFoundError)


def test_model_errors_while_loading_are_checkpoint_errors_naming_the_file(tmp_path, checkpoint):
    model, meta = load_checkpoint(checkpoint)
    assert meta.step == 3 and meta.model == "lvsm_decoder_only"
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(checkpoint, "efficient_lvsm")
    one_line(error, str(checkpoint), "holds model 'lvsm_decoder_only'")

    official = tmp_path / "official.pt"
    torch.save({"model": load_fixture("lvsm_decoder_only")["state_dict"]}, official)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(official, "lvsm_encoder_decoder")
    one_line(error, str(official), "these weights look like lvsm_decoder_only")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(official)
    one_line(error, str(official), "give the model name")

    payload = torch.load(checkpoint, weights_only=False)
    payload["state_dict"].pop("head.proj.weight")
    broken = tmp_path / "broken.pt"
    torch.save(payload, broken)
    with pytest.raises(CheckpointError) as error:     # a KeyError inside models, named by file
        load_checkpoint(broken)
    one_line(error, str(broken), "missing keys ['head.proj.weight']")
    assert not str(error.value).startswith("'")

    payload["config"] = {**payload["config"], "dim": -4}
    torch.save(payload, broken)
    with pytest.raises(CheckpointError) as error:     # a ValueError inside models, named by file
        load_checkpoint(broken)
    one_line(error, str(broken), "ModelConfig.dim")
    assert isinstance(error.value, HarnessError)
