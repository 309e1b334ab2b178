"""The copy-free attention, RMSNorm, ray and feature paths against the plain formulas they stand for,
and the op profile's count of copied bytes. Tiny sizes; no timing is asserted."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from torch.profiler import ProfilerActivity, profile

from conftest import random_views
from harness.profile.ops import bytes_copied
from models.layers import Attention, HeadRMSNorm, WeightlessLayerNorm, head_rms_norm
from models.rays import pixel_rays, plucker_rays
from models.tokens import Tokenizer, input_view_features, patchify, target_view_features

DIM, HEAD_DIM = 32, 8


def copied(fn) -> int:
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return bytes_copied(prof.events())[0]


def attention(cross: bool = False) -> Attention:
    """Distinct q and k norm weights, so that a swapped or shared weight shows."""
    attn = Attention(DIM, HEAD_DIM, cross=cross)
    with torch.no_grad():
        attn.q_norm.weight.uniform_(0.5, 1.5)
        attn.k_norm.weight.uniform_(0.5, 1.5)
    return attn


def plain_heads(x: torch.Tensor) -> torch.Tensor:
    b, s, _ = x.shape
    return x.reshape(b, s, -1, HEAD_DIM).transpose(1, 2).contiguous()


def plain_attention(attn: Attention, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    """Transpose to [B, H, S, hd], copy, F.rms_norm, SDPA, transpose back: the plain formula."""
    if context is None:
        q, k, v = (plain_heads(t) for t in attn.qkv(x).chunk(3, dim=-1))
    else:
        q = plain_heads(attn.q(x))
        k, v = (plain_heads(t) for t in attn.kv(context).chunk(2, dim=-1))
    q = F.rms_norm(q, (HEAD_DIM,), attn.q_norm.weight, attn.q_norm.eps)
    k = F.rms_norm(k, (HEAD_DIM,), attn.k_norm.weight, attn.k_norm.eps)
    out = F.scaled_dot_product_attention(q, k, v)
    return attn.proj(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], DIM))


def test_head_rms_norm_on_a_strided_view_equals_rms_norm():
    qkv = torch.randn(2, 7, 3, 4, HEAD_DIM)
    weight = torch.rand(2, 1, HEAD_DIM) + 0.5
    out = head_rms_norm(qkv[:, :, :2], weight, 1e-5)
    for i in range(2):
        expected = F.rms_norm(qkv[:, :, i].contiguous(), (HEAD_DIM,), weight[i, 0], 1e-5)
        torch.testing.assert_close(out[:, :, i], expected, rtol=0, atol=1e-6)


def test_self_attention_equals_the_plain_formula_and_copies_nothing():
    attn, x = attention(), torch.randn(2, 11, DIM)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), plain_attention(attn, x), rtol=0, atol=1e-6)
        assert copied(lambda: attn(x)) == 0


def test_cross_attention_equals_the_plain_formula_and_copies_nothing():
    attn, x, context = attention(cross=True), torch.randn(2, 5, DIM), torch.randn(2, 9, DIM)
    with torch.no_grad():
        keys, values = attn.keys_values(context)
        assert keys.shape == values.shape == (2, DIM // HEAD_DIM, 9, HEAD_DIM)
        torch.testing.assert_close(attn(x, keys, values), plain_attention(attn, x, context), rtol=0, atol=1e-6)
        assert copied(lambda: attn(x, keys, values)) == 0


def test_rms_norm_runs_in_float32_under_bf16_autocast():
    norm = HeadRMSNorm(HEAD_DIM)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 5, 4, HEAD_DIM).to(torch.bfloat16)
    expected = F.rms_norm(x.float(), (HEAD_DIM,), norm.weight, norm.eps).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        out = norm(x)
    assert out.dtype == torch.bfloat16
    # Equal up to one bf16 rounding step where float32 results straddle a rounding boundary.
    assert ((out.float() - expected.float()).abs() <= 1e-2 * expected.float().abs() + 1e-6).all()


def plain_rays(c2w: torch.Tensor, fxfycxcy: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel-first rays, the plain way: meshgrid, einsum, norm across channel planes."""
    v, u = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    fx, fy, cx, cy = (fxfycxcy[..., i, None, None] for i in range(4))
    cam = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u).expand_as(u - cx)], dim=-3)
    world = torch.einsum("...ij,...jhw->...ihw", c2w[..., :3, :3], cam)
    world = world / world.norm(dim=-3, keepdim=True)
    return c2w[..., :3, 3, None, None].expand_as(world), world


def test_rays_equal_the_channel_first_formula():
    # Non-square, so that swapping rows and columns shows; batch dims [2, 3].
    _, c2w, k, _, _ = random_views(2, 3, 1, size=16)
    origin, direction = pixel_rays(c2w, k, 12, 20)
    plain_origin, plain_direction = plain_rays(c2w, k, 12, 20)
    assert origin.shape == direction.shape == (2, 3, 3, 12, 20)
    torch.testing.assert_close(origin, plain_origin, rtol=0, atol=1e-6)
    torch.testing.assert_close(direction, plain_direction, rtol=0, atol=1e-6)
    expected = torch.cat([torch.cross(plain_origin, plain_direction, dim=-3), plain_direction], dim=-3)
    torch.testing.assert_close(plucker_rays(c2w, k, 12, 20), expected, rtol=0, atol=1e-6)


def test_rays_stay_float32_under_bf16_autocast():
    _, c2w, k, _, _ = random_views(1, 2, 1, size=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rays = plucker_rays(c2w, k, 16, 16)
    assert rays.dtype == torch.float32
    torch.testing.assert_close(rays, plucker_rays(c2w, k, 16, 16), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weightless_layer_norm_is_a_plain_layer_norm_to_the_bit_and_adds_no_state(dtype):
    norm = WeightlessLayerNorm(DIM).to(dtype)
    x = (3.0 * torch.randn(5, 7, DIM) + 1.0).to(dtype)
    out = norm(x)
    assert out.dtype == dtype
    assert torch.equal(out, F.layer_norm(x, (DIM,)))
    assert list(norm.parameters()) == [] and norm.state_dict() == {}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(norm(x.float()), F.layer_norm(x.float(), (DIM,)))
    with torch.device("meta"):  # as a checkpoint is loaded: built on meta, then to_empty
        empty = WeightlessLayerNorm(DIM)
    assert torch.equal(empty.to_empty(device="cpu")(x), out)


def test_view_features_and_tokens_equal_the_channel_first_formula():
    images, ic, ik, tc, tk = random_views(2, 3, 2, size=16)
    o, d = plain_rays(ic, ik, 16, 16)
    expected = torch.cat([images * 2.0 - 1.0, torch.cross(o, d, dim=-3), d], dim=2)
    features = input_view_features(images, ic, ik)
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-6)
    o, d = plain_rays(tc, tk, 16, 16)
    torch.testing.assert_close(target_view_features(tc, tk, 16, 16), torch.cat([torch.cross(o, d, dim=-3), d], dim=2),
                               rtol=0, atol=1e-6)
    tokenizer = Tokenizer(9, 8, DIM)
    with torch.no_grad():
        torch.testing.assert_close(tokenizer(features), tokenizer.proj(patchify(expected.flatten(0, 1).contiguous(), 8)),
                                   rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype, size", [(torch.float32, 4), (torch.bfloat16, 2), (torch.int64, 8)])
def test_bytes_copied_counts_a_known_copy(dtype, size):
    x = torch.zeros(30, 50, dtype=dtype)
    assert copied(lambda: x.t().contiguous()) == 30 * 50 * size
    assert copied(lambda: x.t().contiguous().view(-1)) == 30 * 50 * size
    assert copied(lambda: x.t().reshape(-1)) == 30 * 50 * size
    assert copied(lambda: x.view(50, 30).t()) == 0
    assert copied(lambda: x.to(torch.float64)) == (0 if dtype == torch.float64 else 30 * 50 * 8)
