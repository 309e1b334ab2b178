"""Nothing is silently wrong: every bad input gets one clear line. Records never hold NaN tokens;
models refuse non-finite cameras; official weights of another variant, or with a missing block, are
named; a file that is no checkpoint is one line. (Bad data files and source options: test_data_formats.)"""
from __future__ import annotations

import ast
import json

import numpy as np
import pytest
import torch

from conftest import FIXTURES, VARIANTS, assert_one_line as one_line, load_fixture, random_views
from harness.checkpoint import load_checkpoint, save_checkpoint
from harness.errors import CheckpointError, HarnessError, MissingResource
from harness.records import RecordStore
from models import build_model, load_official

SIZE = 16


# --- records ------------------------------------------------------------------------------------------

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
    """Without a config, the depth is read off the blocks present, so a paper-width checkpoint that lost
    its last block would load as a shallower model. (Weights on the meta device: the check runs before
    any model is built.)"""
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
    one_line(error, str(broken), "DecoderOnlyConfig.dim")
    assert isinstance(error.value, HarnessError)
