"""Camera conditioning as a config field: Plücker raymaps on the tokens (the official models), PRoPE or
GTA inside attention, or both. With cameras inside attention alone, tokens carry only directions in their
own camera's frame, so moving every camera (and the scene) by one rigid transform leaves the renders as
they are; raymaps are not invariant. Analytic FLOPs count the transforms and equal FlopCounterMode's."""
from __future__ import annotations

import pytest
import yaml
import torch

from conftest import random_views
from harness.profile.measure import FlopCounter, Sizes
from harness.report import read_report
from harness.schema import run_experiment
from models import build_model, list_models, model_class
from models.rays import random_rigid_transform

ENCODINGS = ["plucker", "prope", "gta", "plucker+prope"]
READERS = [name for name in list_models() if "prope" in model_class(name).camera_encodings]


@pytest.mark.parametrize("name", READERS)
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_renders_under_a_rigid_move_of_the_world(name, encoding):
    torch.manual_seed(0)
    model = build_model(name, "tiny", camera_encoding=encoding).eval()
    images, ic, ik, tc, tk = random_views(2, 3, 2)
    move = random_rigid_transform(1)
    with torch.no_grad():
        render, moved = model(images, ic, ik, tc, tk), model(images, move @ ic, ik, move @ tc, tk)
    difference = (render - moved).abs().max().item()
    if encoding in ("prope", "gta"):
        assert difference <= 1e-4
    else:  # raymaps depend on where the origin is
        assert difference > 1e-3


@pytest.mark.parametrize("name", READERS)
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_analytic_flops_count_the_camera_transforms(name, encoding):
    count = FlopCounter(Sizes("tiny", {"camera_encoding": encoding})).forward(name, 3, 2, 2)
    assert count.relative_difference == 0, (count.counted, count.analytic.flops)


def test_cameras_enter_and_chunking_does_not_change_the_render():
    torch.manual_seed(0)
    model = build_model("lvsm_decoder_only", "tiny", camera_encoding="prope").eval()
    images, ic, ik, tc, tk = random_views(1, 2, 3)
    with torch.no_grad():
        whole, chunked = model(images, ic, ik, tc, tk), model(images, ic, ik, tc, tk, target_chunk=1)
        one_moved = ic.clone()
        one_moved[:, 0] = random_rigid_transform(2) @ one_moved[:, 0]
        moved = model(images, one_moved, ik, tc, tk)
    assert torch.equal(whole, chunked) and (whole - moved).abs().max().item() > 1e-5  # rounding alone: 6e-8
    assert model.input_tokenizer.proj.weight.shape[1] == 6 * 64 and model.target_tokenizer.proj.weight.shape[1] == 3 * 64


def test_a_variant_that_does_not_implement_it_refuses_it():
    for name in [name for name in list_models() if "prope" not in model_class(name).camera_encodings]:
        with pytest.raises(ValueError, match=f"model '{name}': camera_encoding 'prope' is not implemented"):
            build_model(name, "tiny", camera_encoding="prope")
    with pytest.raises(ValueError, match="camera_encoding: expected one of plucker, prope, gta, plucker\\+prope"):
        build_model("lvsm_decoder_only", "tiny", camera_encoding="rays")


@pytest.mark.parametrize("encoding", ["prope", "gta"])
def test_efficient_lvsm_states_and_kv_cache_carry_the_cameras(encoding):
    """The scene state and the KV cache hold keys and values already transformed by their input views,
    so rendering from them, and adding views one at a time, equal the forward pass."""
    torch.manual_seed(0)
    model = build_model("efficient_lvsm", "tiny", camera_encoding=encoding).eval()
    images, ic, ik, tc, tk = random_views(2, 3, 2)
    with torch.no_grad():
        full = model(images, ic, ik, tc, tk)
        state = model.render_scene(model.encode_scene(images, ic, ik), tc, tk)
        session = model.incremental(tc, tk, 32, 32)
        for i in range(3):
            session.add_views(images[:, i:i + 1], ic[:, i:i + 1], ik[:, i:i + 1])
        incremental = session.render()
    assert (state - full).abs().max().item() <= 1e-5 and (incremental - full).abs().max().item() <= 1e-5


@pytest.mark.parametrize("encoding", ["prope", "gta"])
def test_encoder_decoder_latents_follow_the_first_input_view(encoding):
    """Its latents are tied to the first input view: a rigid move of the world changes nothing, the order
    of the input views does (with Plücker rays alone it does not), and the scene state carries the anchor."""
    torch.manual_seed(0)
    model = build_model("lvsm_encoder_decoder", "tiny", camera_encoding=encoding).eval()
    rays = build_model("lvsm_encoder_decoder", "tiny").eval()
    images, ic, ik, tc, tk = random_views(2, 3, 2)
    order = [1, 0, 2]
    with torch.no_grad():
        render = model(images, ic, ik, tc, tk)
        reordered = model(images[:, order], ic[:, order], ik[:, order], tc, tk)
        state = model.render_scene(model.encode_scene(images, ic, ik), tc, tk)
        rays_change = (rays(images, ic, ik, tc, tk) - rays(images[:, order], ic[:, order], ik[:, order], tc, tk)).abs().max()
    assert (render - reordered).abs().max().item() > 1e-4 and rays_change.item() <= 1e-5
    assert (state - render).abs().max().item() <= 1e-6


def test_a_checkpoint_keeps_its_own_cameras():
    """Official checkpoints were trained with Plücker rays: asking for another encoding is refused in one line."""
    from harness.errors import ConfigError
    from harness.evaluate.spec import EvaluateSpec
    spec = {"kind": "evaluate", "name": "e", "data": {"source": "synthetic_object"},
            "models": [{"name": "lvsm_decoder_only", "checkpoint": "official.pt", "overrides": {"camera_encoding": "prope"}}]}
    with pytest.raises((ConfigError, ValueError), match=r"overrides \['camera_encoding'\] do not apply to checkpoint official.pt"):
        EvaluateSpec.model_validate(spec)


def test_lact_takes_prope_beside_its_raymaps_and_only_its_rope_acts(monkeypatch):
    """LaCT's attention stays inside a view, where PRoPE's projective part cancels: its render equals the
    one with every view's transform replaced by the identity (2D RoPE alone), and differs from raymaps
    alone. `prope` / `gta` without raymaps are refused: its views would never see each other's pose."""
    import models.base as base
    images, ic, ik, tc, tk = random_views(2, 3, 2)
    renders = {}
    for encoding in ("plucker", "plucker+prope"):
        torch.manual_seed(0)
        model = build_model("lact", "tiny", camera_encoding=encoding).eval()
        with torch.no_grad(), model.portable_numerics():
            renders[encoding] = model(images, ic, ik, tc, tk)
            state = model.render_scene(model.encode_scene(images, ic, ik), tc, tk)
        assert torch.equal(state, renders[encoding])
        count = FlopCounter(Sizes("tiny", {"camera_encoding": encoding})).forward("lact", 3, 2, 2)
        assert count.relative_difference == 0, (count.counted, count.analytic.flops)
    monkeypatch.setattr(base, "view_cameras", lambda c2w, k, encoding: (torch.eye(4).expand(*c2w.shape[:-2], 4, 4), None))
    with torch.no_grad(), model.portable_numerics():
        rope_alone = model(images, ic, ik, tc, tk)
    assert (rope_alone - renders["plucker+prope"]).abs().max().item() <= 1e-5
    assert (renders["plucker"] - renders["plucker+prope"]).abs().max().item() > 1e-4
    for encoding in ("prope", "gta"):
        with pytest.raises(ValueError, match=f"model 'lact': camera_encoding '{encoding}' is not implemented"):
            build_model("lact", "tiny", camera_encoding=encoding)


def test_cost_of_each_encoding_is_timed_against_raymaps_and_counted_as_the_formula_says(tmp_path):
    """Every variant with each encoding it implements is timed in alternation with its raymap twin; both
    FLOP counts are recorded, the encoding's equal to its analytic formula; an encoding a variant lacks is
    listed as not run, with what it offers."""
    spec = {"kind": "profile_camera_encoding", "name": "cc", "output_dir": str(tmp_path / "cc"), "preset": "tiny",
            "models": ["efficient_lvsm", "lact"], "encodings": ["gta", "plucker+prope"], "n_inputs": [2, 3],
            "measure": {"device": "cpu", "runs": 2, "warmup": 1, "threads": 1}}
    path = tmp_path / "cc.yaml"
    path.write_text(yaml.safe_dump(spec))
    rows = {(r["model"], r["camera_encoding"], r["n_input"]): r for r in run_experiment(path, progress=False)}
    assert sorted(rows) == sorted((m, e, n) for m, e in [("efficient_lvsm", "gta"), ("efficient_lvsm", "plucker+prope"),
                                                          ("lact", "plucker+prope")] for n in (2, 3))
    for row in rows.values():
        assert row["status"] == "ok" and row["flops_relative_difference"] == 0 and row["latency_ratio"] > 0
        assert row["flops_ratio"] == pytest.approx(row["gflops"] / row["plucker_gflops"])
    # GTA's tokens carry 3 ray channels where raymaps carry 6: fewer parameters; both at once add the transforms.
    assert rows["efficient_lvsm", "gta", 2]["params"] < rows["efficient_lvsm", "gta", 2]["plucker_params"]
    assert rows["efficient_lvsm", "plucker+prope", 2]["flops_ratio"] > 1
    report = read_report(tmp_path / "cc" / "report.json")
    assert report.not_run == ["LaCT: gta not implemented (it offers plucker, plucker+prope)"]
    assert "N=3" in (tmp_path / "cc" / "overhead.md").read_text() and (tmp_path / "cc" / "overhead_vs_n.png").is_file()
