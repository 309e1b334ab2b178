"""The released variants (decoder-only, encoder-decoder, Efficient-LVSM, LaCT) against the official fixtures
and state dicts, and what the model code promises: independent target views, chunking, the KV cache,
presets, gradient checkpointing, compiling, errors."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import ALL_VARIANTS, VARIANTS, load_fixture, portable, random_views
from models import build_model, list_models, load_official, model_card, model_class, pixel_rays, presets
from models.official import convert_official_state_dict, unwrap_checkpoint

# Compared with official fixtures: `make test` runs these again on a second CPU kernel path.
pytestmark = pytest.mark.parity

# The official paper-size parameter counts live on the variants' cards.
OFFICIAL_PARAMS = {name: model_card(name).official_params for name in VARIANTS}
REFERENCE = Path(__file__).parent / "fixtures"


def _call(model, f):
    with torch.no_grad():
        return model(f["input_image"], f["input_c2w"], f["input_fxfycxcy"], f["target_c2w"], f["target_fxfycxcy"])


@pytest.mark.parametrize("name", VARIANTS)
def test_render_matches_official_fixture(name):
    f = load_fixture(name)
    model, reference = portable(load_official(name, f["config"], f["state_dict"]), f)
    render = _call(model, f)
    assert render.shape == reference.shape
    assert (render - reference).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", VARIANTS)
def test_load_official_without_config_and_from_wrapped_file(name, tmp_path):
    f = load_fixture(name)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {f"module.{k}": v for k, v in f["state_dict"].items()}, "step": 7}, path)
    for model in (load_official(name, None, str(path)), load_official(name, path), load_official(name, f["state_dict"])):
        model, reference = portable(model, f)
        assert (_call(model, f) - reference).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", VARIANTS)
def test_rays_match_fixture(name):
    f = load_fixture(name)
    for side in ("input", "target"):
        if f"{side}_ray_o" not in f:  # a fixture may hold the input rays only
            continue
        origin, direction = pixel_rays(f[f"{side}_c2w"], f[f"{side}_fxfycxcy"], 32, 32)
        assert (origin - f[f"{side}_ray_o"]).abs().max().item() <= 1e-6
        assert (direction - f[f"{side}_ray_d"]).abs().max().item() <= 1e-6


def test_incremental_renders_match_fixture():
    f = load_fixture("efficient_lvsm")
    model = load_official("efficient_lvsm", f["config"], f["state_dict"])
    session = model.incremental(f["target_c2w"], f["target_fxfycxcy"], 32, 32)
    for i, expected in enumerate(f["incremental_renders"]):
        with torch.no_grad():
            session.add_views(f["input_image"][:, i:i + 1], f["input_c2w"][:, i:i + 1], f["input_fxfycxcy"][:, i:i + 1])
            assert (session.render() - expected).abs().max().item() <= 1e-5
    assert (session.render() - _call(model, f)).abs().max().item() <= 1e-5


def test_kv_cache_never_reencodes_earlier_views():
    model = build_model("efficient_lvsm", "tiny").eval()
    images, ic, ik, tc, tk = random_views(1, 5, 2)
    calls = []
    model.input_blocks[0].register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    session = model.incremental(tc, tk, 32, 32)
    with torch.no_grad():
        session.add_views(images[:, :2], ic[:, :2], ik[:, :2]).render()
        for i in range(2, 5):
            session.add_views(images[:, i:i + 1], ic[:, i:i + 1], ik[:, i:i + 1]).render()
        full = model(images, ic, ik, tc, tk)
    # Tokens through the first input block: 2 views, then 1, 1, 1 (never the earlier ones again).
    assert calls[:4] == [2, 1, 1, 1]
    assert model.input_views_encoded == 5 + 5
    assert (session.render() - full).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ["lvsm_decoder_only", "lvsm_encoder_decoder"])
def test_target_chunking_leaves_output_unchanged(name):
    model = build_model(name, "tiny").eval()
    views = random_views(2, 2, 5)
    with torch.no_grad():
        whole = model(*views)
        chunked = model(*views, target_chunk=2)
    assert whole.shape == (2, 5, 3, 32, 32)
    assert torch.allclose(whole, chunked, atol=1e-6)


@pytest.mark.parametrize("name", VARIANTS)
def test_paper_preset_matches_the_official_state_dict_key_by_key(name):
    """keys_<name>.txt: the official paper-size state dict (name, shape), listed from the official
    code on the meta device. After our key mapping, every official key must be one of ours with the
    same shape, and we must have no other."""
    lines = (REFERENCE / f"keys_{name}.txt").read_text().strip().splitlines()
    listing = {key: ast.literal_eval(shape) for key, shape in (line.split("\t") for line in lines[:-1])}
    total = lines[-1].split()
    assert total[0] == "total_parameters" and int(total[1]) == OFFICIAL_PARAMS[name]
    with torch.device("meta"):
        model = build_model(name, "paper")
        official = {key: torch.empty(shape) for key, shape in listing.items()}
    mapped = convert_official_state_dict(model_class(name), official)
    assert len(mapped) == len(listing)                       # the mapping sends no two keys to one
    ours = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    theirs = {key: tuple(value.shape) for key, value in mapped.items()}
    assert sorted(set(theirs) - set(ours)) == [] and sorted(set(ours) - set(theirs)) == []
    assert {key: shape for key, shape in theirs.items() if ours[key] != shape} == {}
    assert model.num_parameters() == OFFICIAL_PARAMS[name] == sum(torch.Size(s).numel() for s in listing.values())


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_target_views_are_rendered_independently(name):
    model = build_model(name, "tiny").eval()
    images, ic, ik, tc, tk = random_views(1, 2, 3)
    with torch.no_grad():
        all3 = model(images, ic, ik, tc, tk)
        one = model(images, ic, ik, tc[:, 1:2], tk[:, 1:2])
    assert torch.allclose(all3[:, 1:2], one, atol=1e-5)


@pytest.mark.parametrize("name", VARIANTS)
def test_clear_errors_for_wrong_shapes(name):
    model = build_model(name, "tiny")
    images, ic, ik, tc, tk = random_views(1, 2, 1)
    with pytest.raises(ValueError, match=r"input_images: height and width must be divisible by the patch size 8, got 30x30"):
        model(images[..., :30, :30], ic, ik, tc, tk)
    with pytest.raises(ValueError, match=r"input_c2w: expected shape \[1, 2, 4, 4\], got \[1, 3, 4, 4\]"):
        model(images, torch.cat([ic, ic[:, :1]], 1), ik, tc, tk)
    with pytest.raises(ValueError, match=r"target_fxfycxcy: expected shape \[1, 1, 4\], got \[1, 2, 4\]"):
        model(images, ic, ik, tc, torch.cat([tk, tk], 1))
    with pytest.raises(ValueError, match=r"input_images: expected shape \[b, n, 3, h, w\]"):
        model(images[0], ic, ik, tc, tk)


def test_load_official_names_problems():
    f = load_fixture("lvsm_decoder_only")
    state = dict(f["state_dict"])
    state.pop("transformer_blocks.1.mlp.mlp.2.weight")
    state["transformer_blocks.0.attn.extra.weight"] = torch.zeros(3)
    with pytest.raises(KeyError, match=r"missing keys \['blocks\.1\.mlp\.fc_out\.weight'\]"
                                      r".*unexpected keys \['blocks\.0\.attn\.extra\.weight'\]"):
        load_official("lvsm_decoder_only", f["config"], state)
    bad = dict(f["state_dict"])
    bad["image_token_decoder.1.weight"] = torch.zeros(100, 64)
    with pytest.raises(KeyError, match=r"shape mismatches \['head\.proj\.weight: expected \[192, 64\], got \[100, 64\]'\]"):
        load_official("lvsm_decoder_only", f["config"], bad)
    with pytest.raises(ValueError, match=r"config says dim=128 but the weights imply 64"):
        load_official("lvsm_decoder_only", {**f["config"], "d": 128}, f["state_dict"])
    with pytest.raises(KeyError, match="unknown model 'lvsm_nope'"):
        load_official("lvsm_nope", f["config"], f["state_dict"])
    with pytest.raises(KeyError, match="no tensors found"):
        unwrap_checkpoint({"model": {"step": 1}})


def test_presets_and_overrides():
    assert presets("lvsm_decoder_only")["paper"].tokens_per_view == 1024
    model = build_model("efficient_lvsm", "tiny", stream_depth=3)
    assert len(model.input_blocks) == 3 and len(model.target_blocks) == 3
    with pytest.raises(ValueError, match="'efficient_lvsm' has no config field 'layers'"):
        build_model("efficient_lvsm", "tiny", layers=3)
    with pytest.raises(ValueError, match="'efficient_lvsm' has no config field 'depth'"):
        build_model("efficient_lvsm", "tiny", depth=3)       # would be ignored silently
    with pytest.raises(KeyError, match="has no preset 'huge'"):
        build_model("efficient_lvsm", "huge")


def test_latent_init_std_sets_the_encoder_decoder_latents():
    torch.manual_seed(0)
    official = build_model("lvsm_encoder_decoder", "tiny", n_latents=256)
    wide = build_model("lvsm_encoder_decoder", "tiny", n_latents=256, latent_init_std=1)
    assert abs(official.latents.std().item() - 0.02) < 0.002
    assert abs(wide.latents.std().item() - 1.0) < 0.05
    assert wide.config.latent_init_std == 1.0 and isinstance(wide.config.latent_init_std, float)
    with pytest.raises(ValueError, match="latent_init_std: expected a positive number, got 0"):
        build_model("lvsm_encoder_decoder", "tiny", latent_init_std=0)
    with pytest.raises(TypeError, match="latent_init_std: expected a number, got 'big'"):
        build_model("lvsm_encoder_decoder", "tiny", latent_init_std="big")


@pytest.mark.parametrize("name", VARIANTS)
def test_gradient_checkpointing_recomputes_every_block_and_keeps_the_gradients(name):
    """Checkpointing shows as each block's forward running again during backward (and only then);
    the gradients must not change."""
    views = random_views(1, 2, 2)
    grads, runs = [], {}
    for ckpt in (False, True):
        torch.manual_seed(1)
        model = build_model(name, "tiny").train()
        model.gradient_checkpointing = ckpt
        blocks = [block for child in model.modules() if isinstance(child, nn.ModuleList) for block in child]
        calls = [0]

        def count(*_, calls=calls):
            calls[0] += 1
        for block in blocks:
            # A pre-hook: the recomputation stops once it has what backward needs, before post-hooks.
            block.register_forward_pre_hook(count)
        loss = model(*views).square().mean()
        forward = calls[0]
        loss.backward()
        runs[ckpt] = (forward, calls[0] - forward)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert runs[False][0] >= len(blocks) > 0 and runs[False][1] == 0
    assert runs[True] == (runs[False][0], runs[False][0])   # each block run once more, in backward
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    with torch.no_grad():                                    # never under no_grad (inference, timing)
        calls[0] = 0
        model(*views)
        assert calls[0] == runs[False][0]


def _two_stream_reference(model, views, final_context: bool) -> torch.Tensor:
    """Efficient-LVSM's forward spelled out from its parts: target block l cross-attends to the input
    states after input block l (co-refinement), or to the input stream's final states (ablation)."""
    images, ic, ik, tc, tk = views
    b, m, (h, w) = images.shape[0], tc.shape[1], images.shape[-2:]
    tokens, states = model.input_tokens(images, ic, ik), []
    for block in model.input_blocks:
        tokens = block(tokens)
        states.append(tokens)
    if final_context:
        states = [states[-1]] * len(states)
    targets = model.target_tokens(tc, tk, h, w)
    for block, context in zip(model.target_blocks, states):
        keys, values = block.context_keys_values(context.reshape(b, -1, context.shape[-1]))
        targets = block(targets, keys, values, m)
    return model.head(targets, h, w).reshape(b, m, 3, h, w)


def test_final_context_ablation_reads_the_final_input_states():
    """Same (official, perturbed) weights in both: each model equals its own spelled-out definition
    and not the other's."""
    f = load_fixture("efficient_lvsm")
    views = (f["input_image"], f["input_c2w"], f["input_fxfycxcy"], f["target_c2w"], f["target_fxfycxcy"])
    with torch.no_grad():
        for name, final in (("efficient_lvsm", False), ("efficient_lvsm_final_context", True)):
            model = load_official(name, f["config"], f["state_dict"])
            out = model(*views)
            assert (out - _two_stream_reference(model, views, final)).abs().max().item() <= 1e-5, name
            assert (out - _two_stream_reference(model, views, not final)).abs().max().item() > 1e-3, name


def test_ablation_loads_official_efficient_weights():
    f = load_fixture("efficient_lvsm")
    model = load_official("efficient_lvsm_final_context", f["config"], f["state_dict"])
    assert len(model.target_blocks) == 2 and model.num_parameters() == 303_296


@pytest.mark.parametrize("name", list_models())
def test_a_compiled_model_runs_again_without_recompiling(name):
    """A guard that fails on every call (a Python counter bumped in forward, say) makes dynamo
    recompile each call and, past its limit, run eagerly without a word: compiled timings would be eager."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_model(name, "tiny").eval()
    views = random_views(1, 2, 2, size=model.config.image_size)
    fn = torch.compile(model, backend="eager")
    with torch.no_grad():
        first = fn(*views)
        with torch._dynamo.config.patch(error_on_recompile=True):
            again = fn(*views)
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    torch.testing.assert_close(again, model(*views), rtol=0, atol=1e-6)
