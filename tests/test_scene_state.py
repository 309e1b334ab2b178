"""Encode once, render many: every variant's scene state renders what its forward pass renders, the
encoder runs once per scene, and one more target view costs what each design says it costs."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import ALL_VARIANTS, assert_one_line, random_views
from harness.errors import ConfigError
from harness.profile.measure import FlopCounter, Sizes
from harness.schema import load_experiment, run_experiment, with_preset
from models import SceneState, build_model, list_models, model_class, model_config

# Compared with official fixtures: `make test` runs these again on a second CPU kernel path.
pytestmark = pytest.mark.parity

STATEFUL = [name for name in ALL_VARIANTS if model_class(name).scene_state]
STATELESS = [name for name in ALL_VARIANTS if not model_class(name).scene_state]


def _model(name: str) -> nn.Module:
    """A tiny model whose linears are drawn at unit gain: at the official init the renders of a
    random tiny model hardly depend on the inputs (5e-4), too little for a 1e-5 check to mean much."""
    model = build_model(name, "tiny").eval()
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=module.in_features ** -0.5)
    return model


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_renders_from_the_scene_state_equal_the_forward_pass(name):
    model = _model(name)
    images, ic, ik, tc, tk = random_views(2, 3, 4)
    with torch.no_grad():
        full = model(images, ic, ik, tc, tk)
        state = model.encode_scene(images, ic, ik)
        together = model.render_scene(state, tc, tk)
        one_by_one = torch.cat([model.render_scene(state, tc[:, i:i + 1], tk[:, i:i + 1]) for i in range(4)], dim=1)
        other_inputs = model(random_views(2, 3, 4, seed=5)[0], ic, ik, tc, tk)
    assert isinstance(state, SceneState) and (state.batch, state.views, state.height, state.width) == (2, 3, 32, 32)
    assert together.shape == full.shape == (2, 4, 3, 32, 32)
    assert (together - full).abs().max().item() <= 1e-5
    assert (one_by_one - full).abs().max().item() <= 1e-5
    # The check can fail: other input views move the renders by far more than the tolerance.
    assert (other_inputs - full).abs().max().item() > 1e-2


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_more_targets_from_one_state_never_run_the_input_views_again(name):
    model = _model(name)
    images, ic, ik, tc, tk = random_views(1, 3, 3)
    tokenized = []
    model.input_tokenizer.register_forward_hook(lambda module, args, out: tokenized.append(out.shape[0]))
    with torch.no_grad():
        state = model.encode_scene(images, ic, ik)
        for i in range(3):
            model.render_scene(state, tc[:, i:i + 1], tk[:, i:i + 1])
    if model_class(name).scene_state:
        assert tokenized == [3]  # the 3 input views, once, when the state was built
    else:  # no scene state: each render recomputes everything from the input views
        assert tokenized == [3, 3, 3]


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_render_cost_given_a_state(name):
    """With a state, M targets cost M times one (nothing shared is recomputed) and less than a
    forward pass; without one, a render is the forward pass itself and building the "state" costs nothing."""
    counter = FlopCounter(Sizes("tiny"))
    encode, one, _ = counter.scene(name, 4, 1)
    _, four, _ = counter.scene(name, 4, 4)
    forward = counter.forward(name, 4, 1).counted
    if model_class(name).scene_state:
        assert four == 4 * one
        assert encode > 0 and one < forward
        # Never more than the forward pass: equal where the forward does exactly encode + render, less where
        # it computes more (the masked decoder-only computes the scores its mask throws away).
        assert encode + one <= forward
    else:
        assert encode == 0
        assert one == forward and four == counter.forward(name, 4, 4).counted


def test_encoder_decoder_one_more_target_costs_the_same_at_every_n():
    counter = FlopCounter(Sizes("tiny"))
    encode, one, _ = counter.scene("lvsm_encoder_decoder", 4)
    assert encode + one == counter.forward("lvsm_encoder_decoder", 4, 1).counted
    costs = [counter.scene("lvsm_encoder_decoder", n)[1] for n in (1, 2, 4, 8, 16)]
    encodes = [counter.scene("lvsm_encoder_decoder", n)[0] for n in (1, 2, 4, 8, 16)]
    assert len(set(costs)) == 1  # the latents are fixed in size
    assert encodes == sorted(encodes) and encodes[-1] > 2 * encodes[0]  # while the encoder's cost grows


@pytest.mark.parametrize("name", ["efficient_lvsm", "lvsm_masked"])
def test_one_more_target_is_linear_in_n_with_the_cross_attention_slope(name):
    """Cross-attention of P target queries to N*P cached keys: 2 matmuls x P x NP x dim MACs per layer."""
    config = model_config(name, "tiny")
    counter, p, d = FlopCounter(Sizes("tiny")), config.tokens_per_view, config.dim
    ns = [1, 2, 4, 8, 16]
    costs = [counter.scene(name, n)[1] for n in ns]
    depth = config.stream_depth if name == "efficient_lvsm" else config.depth
    slope = depth * 2 * (2 * p * p * d)  # FLOPs per input view
    assert all(b - a == slope * (n1 - n0) for (n0, a), (n1, b) in zip(zip(ns, costs), zip(ns[1:], costs[1:])))
    assert costs[0] > slope  # plus a part that does not depend on N


def test_efficient_lvsm_one_more_target_is_its_analytic_target_stream():
    counter = FlopCounter(Sizes("tiny"))
    model = counter.model("efficient_lvsm")
    for n in (1, 5, 32):
        assert counter.scene("efficient_lvsm", n)[1] == model.target_stream_flops(n, 1).flops
        assert counter.scene("efficient_lvsm", n)[0] == model.input_stream_flops(n).flops


def test_decoder_only_one_more_target_is_a_full_forward_with_one_target():
    counter = FlopCounter(Sizes("tiny"))
    for n in (1, 8, 32):
        assert counter.scene("lvsm_decoder_only", n)[1] == counter.forward("lvsm_decoder_only", n, 1).counted
        assert counter.scene("lvsm_decoder_only", n)[1] == counter.model("lvsm_decoder_only").analytic_flops(n, 1).flops


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_non_finite_cameras_and_foreign_states_are_refused_in_one_line(name):
    model = build_model(name, "tiny").eval()
    images, ic, ik, tc, tk = random_views(1, 2, 1)
    bad = ic.clone()
    bad[0, 1, 0, 3] = float("nan")
    with pytest.raises(ValueError) as error:
        model.encode_scene(images, bad, ik)
    assert_one_line(error, "input_c2w", "finite")
    with torch.no_grad():
        state = model.encode_scene(images, ic, ik)
    bad = tk.clone()
    bad[0, 0, 0] = float("inf")
    with pytest.raises(ValueError) as error:
        model.render_scene(state, tc, bad)
    assert_one_line(error, "target_fxfycxcy", "finite")
    with pytest.raises(ValueError) as error:
        model.render_scene(state, tc[:, :, :3], tk)
    assert_one_line(error, "target_c2w", "expected shape")
    other = next(n for n in ALL_VARIANTS if n != name)
    with torch.no_grad():
        foreign = build_model(other, "tiny").eval().encode_scene(images, ic, ik)
    with pytest.raises(TypeError) as error:
        model.render_scene(foreign, tc, tk)
    assert_one_line(error, name, other)


def test_global_input_has_a_scene_state_but_no_incremental_cache():
    model = _model("efficient_lvsm_global_input")
    images, ic, ik, tc, tk = random_views(1, 3, 2)
    with torch.no_grad():
        state = model.encode_scene(images, ic, ik)
        assert (model.render_scene(state, tc, tk) - model(images, ic, ik, tc, tk)).abs().max().item() <= 1e-5
    with pytest.raises(TypeError, match="not offered"):
        model.incremental(tc, tk, 32, 32)


def test_every_variant_says_what_its_state_holds():
    assert "lvsm_decoder_only" in STATELESS and "mmdit_joint" in STATELESS
    assert {"lvsm_encoder_decoder", "efficient_lvsm"} <= set(STATEFUL)
    assert all(isinstance(model_class(name).scene_state, str) and model_class(name).scene_state for name in STATEFUL)


@pytest.mark.slow
def test_one_more_target_experiment_counts_times_and_says_which_variants_recompute(tmp_path, capsys):
    path = tmp_path / "omt.yaml"
    path.write_text(f"""
kind: profile_one_more_target
models: [lvsm_decoder_only, lvsm_encoder_decoder, efficient_lvsm]
preset: tiny
flops: {{preset: tiny}}
n_inputs: [1, 2, 4]
timed_n_inputs: [1, 4]
fit_n: [1, 64]
headline_n: [2, 4]
measure: {{device: cpu, warmup: 1, runs: 2, min_runs: 1}}
output_dir: {tmp_path / 'out'}
""")
    rows = run_experiment(path, progress=False)
    assert [(r["part"], r["n_input"]) for r in rows[::3]] == [("flops", 1), ("flops", 2), ("flops", 4), ("latency", 1), ("latency", 4)]
    assert all(r["status"] == "ok" for r in rows)
    by = {(r["model"], r["part"], r["n_input"]): r for r in rows}
    assert by["lvsm_decoder_only", "flops", 4]["scene_state"] is None and by["lvsm_decoder_only", "flops", 4]["state_mib"] is None
    assert by["lvsm_decoder_only", "flops", 4]["encode_gflops"] == 0
    assert by["lvsm_encoder_decoder", "flops", 1]["gflops"] == by["lvsm_encoder_decoder", "flops", 4]["gflops"]
    assert by["efficient_lvsm", "flops", 4]["state_mib"] == pytest.approx(4 * by["efficient_lvsm", "flops", 1]["state_mib"])
    assert by["efficient_lvsm", "latency", 4]["latency_ms"] > 0 and by["efficient_lvsm", "latency", 4]["runs"] == 2
    assert by["efficient_lvsm", "flops", 2]["device"].startswith("meta") and by["efficient_lvsm", "latency", 1]["device"].startswith("cpu")
    out = tmp_path / "out"
    for name in ("omt.md", "gflops_wide.md", "latency.md", "exponents.md", "one_more_target.png", "headlines.md"):
        assert (out / name).is_file(), name
    latency = (out / "latency.md").read_text()
    assert "none: recomputes the whole forward pass over the N input views" in latency
    assert "LVSM decoder-only (no state: recomputes)" in (out / "gflops_wide.md").read_text()
    headlines = (out / "headlines.md").read_text()
    assert "LVSM encoder-decoder, one more target at N = 2, 4:" in headlines and "n/a" in headlines  # N=2 not timed
    assert run_experiment(path, progress=False) == rows  # a rerun measures nothing again
    assert "0 measured, 15 already recorded" in capsys.readouterr().out


def test_one_more_target_preset_flag_sets_the_counted_preset_too(tmp_path):
    path = tmp_path / "omt.yaml"
    path.write_text("kind: profile_one_more_target\nmeasure: {device: cpu}\n")
    spec = load_experiment(path)
    assert spec.models == list_models() and spec.flops.preset == "paper"
    assert with_preset(spec).preset == "small" and with_preset(spec).flops.preset == "paper"
    assert with_preset(spec, "tiny").preset == "tiny" and with_preset(spec, "tiny").flops.preset == "tiny"
    path.write_text("kind: profile_one_more_target\nmeasure: {compile: true}\n")
    with pytest.raises(ConfigError, match="compile: true is not supported"):
        load_experiment(path)
