"""LaCT against the official fixture (renders, encode once / render many), its Newton-Schulz step in
bfloat16, its fast-weight state, and its analytic FLOPs against FlopCounterMode."""
from __future__ import annotations

import pytest
import torch

import models.lact as lact
from conftest import load_fixture, random_views
from harness.profile.measure import FlopCounter
from models import PRESETS, LaCT, build_model, load_official


def _official():
    """The fixture and its official weights, with the official bfloat16 kernel in the Newton-Schulz step."""
    f = load_fixture("lact")
    return f, load_official("lact", f["config"], f["state_dict"]).use_official_kernel()


def _inputs(f):
    return f["input_image"], f["input_c2w"], f["input_fxfycxcy"]


def test_official_weights_reproduce_the_render():
    f, model = _official()
    assert isinstance(model, LaCT) and model.config.depth == 2 and model.config.fast_weight_ratio == 2
    with torch.no_grad():
        render = model(*_inputs(f), f["target_c2w"], f["target_fxfycxcy"])
    assert (render - f["render"]).abs().max().item() <= 1e-5


def test_encode_once_render_many_reproduces_reconstruct_then_render():
    f, model = _official()
    with torch.no_grad():
        scene = model.encode_scene(*_inputs(f))
        render = model.render_scene(scene, f["target_c2w"], f["target_fxfycxcy"])
        one_at_a_time = torch.cat([model.render_scene(scene, f["target_c2w"][:, i:i + 1], f["target_fxfycxcy"][:, i:i + 1])
                                   for i in range(f["target_c2w"].shape[1])], dim=1)
    assert (render - f["render_reconstruct_then_render"]).abs().max().item() <= 1e-5
    assert (one_at_a_time - render).abs().max().item() <= 1e-6
    assert LaCT.scene_state == "fast weights"
    # The state: per block, the three fast weights of each batch element.
    assert len(scene.content.fast_weights) == 2 and scene.batch == 2 and (scene.height, scene.width) == (32, 32)
    assert [tuple(w.shape) for w in scene.content.fast_weights[0]] == [(2, 64, 128), (2, 128, 64), (2, 64, 128)]


def test_the_newton_schulz_step_runs_in_bfloat16(monkeypatch):
    """The fixture pins the cast: the same step in float32 moves the renders far beyond 1e-5."""
    f, model = _official()
    monkeypatch.setattr(lact, "newton_schulz", _float32_newton_schulz)
    with torch.no_grad():
        render = model(*_inputs(f), f["target_c2w"], f["target_fxfycxcy"])
    assert (render - f["render"]).abs().max().item() > 1e-3


def _float32_newton_schulz(g, steps, matmul=None):
    a, b, c = lact.NEWTON_SCHULZ_COEFFICIENTS
    tall = g.shape[1] > g.shape[2]
    x = g.transpose(1, 2) if tall else g
    x = x / (x.norm(dim=(1, 2), keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = x @ x.transpose(1, 2)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.transpose(1, 2) if tall else x


def test_forward_is_encode_then_render_and_target_views_are_independent():
    model = build_model("lact", "tiny").eval()
    images, ic, ik, tc, tk = random_views(2, 3, 3)
    with torch.no_grad():
        whole = model(images, ic, ik, tc, tk)
        scene = model.encode_scene(images, ic, ik)
        split = model.render_scene(scene, tc, tk)
        one = model.render_scene(scene, tc[:, 1:2], tk[:, 1:2])
    assert torch.equal(whole, split)
    assert (whole[:, 1:2] - one).abs().max().item() <= 1e-6
    assert model.input_views_encoded == 6


def test_input_views_are_encoded_together():
    """The fast weights learn from all input views at once: dropping one changes every render."""
    model = build_model("lact", "tiny").eval()
    images, ic, ik, tc, tk = random_views(1, 3, 1)
    with torch.no_grad():
        three = model(images, ic, ik, tc, tk)
        two = model(images[:, :2], ic[:, :2], ik[:, :2], tc, tk)
    assert (three - two).abs().max().item() > 1e-4


def test_render_scene_refuses_targets_that_do_not_fit_the_state():
    model = build_model("lact", "tiny").eval()
    images, ic, ik, tc, tk = random_views(2, 2, 1)
    with torch.no_grad():
        scene = model.encode_scene(images, ic, ik)
    with pytest.raises(ValueError, match=r"target_c2w: expected shape \[2, 1, 4, 4\], got \[1, 1, 4, 4\]"):
        model.render_scene(scene, tc[:1], tk[:1])
    with pytest.raises(ValueError, match=r"target_fxfycxcy: expected shape \[2, 1, 4\], got \[2, 2, 4\]"):
        model.render_scene(scene, tc, torch.cat([tk, tk], 1))
    with pytest.raises(ValueError, match=r"input_images: height and width must be divisible by the patch size 8"):
        model.encode_scene(images[..., :30, :30], ic, ik)


def test_training_reaches_every_parameter():
    model = build_model("lact", "tiny").train()
    model(*random_views(1, 2, 2)).square().mean().backward()
    unused = [key for key, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert unused == []


@pytest.mark.parametrize("preset,n,m,batch", [("tiny", 1, 1, 1), ("tiny", 3, 2, 2), ("paper", 2, 1, 1), ("paper", 8, 3, 1)])
def test_analytic_flops_equal_the_counted_ones(preset, n, m, batch):
    count = FlopCounter(PRESETS[preset]).forward("lact", n, m, batch)
    assert count.relative_difference <= 1e-4, (count.counted, count.analytic.flops)


def test_one_more_target_view_costs_the_same_whatever_the_number_of_input_views():
    with torch.device("meta"):
        model = build_model("lact", "paper")
    assert model.render_flops(1).flops == model.render_flops(2).flops // 2
    encode = [model.encode_flops(n).flops for n in (2, 4, 8)]
    assert encode[2] - encode[1] == 2 * (encode[1] - encode[0])  # linear in the number of input views
    # Rendering from the state equals the forward minus the encoding.
    assert model.analytic_flops(8, 3).flops == encode[2] + model.render_flops(3).flops


def test_an_incremental_fast_weight_update_is_exact_with_one_block_only():
    """Adding a view's gradients to the kept ones reproduces the rebuilt state with one block; from
    the second block on, the earlier views' tokens are stale and the render moves."""
    images, ic, ik, tc, tk = random_views(1, 4, 2)
    errors = {}
    for depth in (1, 3):
        torch.manual_seed(0)
        model = build_model("lact", "tiny", depth=depth).eval()
        with torch.no_grad():
            rebuilt = model(images, ic, ik, tc, tk)
            state = model.encode_scene(images[:, :3], ic[:, :3], ik[:, :3], keep_gradients=True)
            state = model.extend_scene(state, images[:, 3:], ic[:, 3:], ik[:, 3:])
            errors[depth] = (model.render_scene(state, tc, tk) - rebuilt).abs().max().item()
    assert errors[1] <= 1e-4 and errors[3] > 1e-4, errors
    with pytest.raises(ValueError, match="keeps no gradient sums"):
        model.extend_scene(model.encode_scene(images, ic, ik), images[:, :1], ic[:, :1], ik[:, :1])


def test_on_a_cpu_the_float32_kernel_sums_the_same_bfloat16_products_by_default():
    """Same bfloat16 operands and rounded results, float32 sums in another order: the renders move by
    rounding only (which the fast-weight step amplifies to about 5e-3), and the official kernel is one
    call away."""
    f, model = _official()
    views = (*_inputs(f), f["target_c2w"], f["target_fxfycxcy"])
    with torch.no_grad():
        official = model(*views)
        default = model.use_official_kernel(False)(*views)
    assert (official - f["render"]).abs().max().item() <= 1e-5
    assert 0 < (default - f["render"]).abs().max().item() < 2e-2
    x = torch.randn(3, 8, 16).bfloat16()
    native, summed = x @ x.transpose(1, 2), lact.bfloat16_matmul(torch.device("cpu"), False)(x, x.transpose(1, 2))
    assert summed.dtype == torch.bfloat16 and (native.float() - summed.float()).abs().max() <= 2 ** -7 * native.float().abs().max()
