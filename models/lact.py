"""LaCT: attention within each view, and a large-chunk test-time-training layer that carries
information across views in fast weights (Zhang, Tan et al., "Test-Time Training Done Right", 2025).

Each block is three pre-norm residual sub-layers: self-attention within one view, the fast-weight
layer over all of a scene's tokens, and an MLP. The fast-weight layer is a SwiGLU MLP whose weights
take one orthogonalised (Muon-style) step on the input tokens' keys and values and are then applied
to every token's query. Input tokens never depend on target tokens, and nothing couples target views,
so a scene encodes once into the per-block fast weights (`encode_scene`), and each target view renders
from them alone (`render_scene`); the one-call forward is exactly the two in sequence. The cost is
linear in the number of input views, and one more target view costs the same whatever that number.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import textwrap
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from . import flops as F_
from .base import NVSModel, SceneState
from .config import SHARED_SIZES, VariantConfig
from .layers import MLP, layer_norm
from .official import Loader, OfficialCode, Views
from .prope import CameraTransforms, transform_macs, uses_prope
from .registry import ModelCard, register
from .tokens import RGB_CHANNELS, RenderHead, Tokenizer, patchify

# Token channels, in the official order: ray origin, ray direction, origin x direction, 2*rgb - 1.
# Target views carry the first nine and zeros in place of the image.
LACT_CHANNELS = 12
POSE_CHANNELS = 9
BASE_LR = 0.01  # the fast weights' learning rate before the per-token adjustment (softplus(x + inv_softplus))
NEWTON_SCHULZ_STEPS = 5
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

LACT_PAPER = 'Zhang, Tan et al., "Test-Time Training Done Right" (LaCT), 2025'
LACT_CODE = "github.com/a1600012888/LaCT, lact_nvs/ (MIT licence)"

FastWeights = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # w0, w1, w2, each [b, heads, ., .]


@dataclass
class LaCTScene:
    """A scene encoded by LaCT: each block's fast weights after their step on the input views, and
    the image size they were encoded at."""
    fast_weights: list[FastWeights]
    height: int
    width: int
    # Each block's gradient sums over the input tokens, kept only for `extend_scene`.
    gradients: list[FastWeights] | None = None

    @property
    def batch(self) -> int:
        return self.fast_weights[0][0].shape[0]


def _float32(device: torch.device):
    """The official code computes rays and the learning rates outside autocast."""
    if device.type in ("cuda", "cpu") and torch.is_autocast_enabled(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return nullcontext()


def lact_rays(c2w: torch.Tensor, fxfycxcy: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[ray_o, ray_d, ray_o x ray_d]: [b, v, 9, h, w] in float32.

    Computed as the official code computes them (pixel directions rotated by a batched matrix
    product, then normalized; channel-first), to the bit: the fast weights' bfloat16 Newton-Schulz
    step turns a difference of 1e-7 in the tokens into about 3e-3 in the renders, so a formula
    that is equal only up to rounding (`plucker_rays`) does not reproduce the official renders."""
    b, v = fxfycxcy.shape[:2]
    with _float32(c2w.device):
        c2w, fxfycxcy = c2w.float().reshape(b * v, 4, 4), fxfycxcy.float().reshape(b * v, 4)
        columns = torch.arange(width, device=c2w.device, dtype=torch.float32)[None, :].expand(height, -1).flatten()
        rows = torch.arange(height, device=c2w.device, dtype=torch.float32)[:, None].expand(-1, width).flatten()
        x = (columns + 0.5 - fxfycxcy[:, 2:3]) / fxfycxcy[:, 0:1]  # [b*v, h*w]
        y = (rows + 0.5 - fxfycxcy[:, 3:4]) / fxfycxcy[:, 1:2]
        directions = torch.bmm(c2w[:, :3, :3], torch.stack([x, y, torch.ones_like(x)], dim=1))  # [b*v, 3, h*w]
        directions = directions / torch.norm(directions, dim=1, keepdim=True)
        origins = c2w[:, :3, 3:4].expand_as(directions)
        rays = torch.cat([origins, directions, torch.cross(origins, directions, dim=1)], dim=1)
    return rays.reshape(b, v, POSE_CHANNELS, height, width)


def lact_view_features(c2w: torch.Tensor, fxfycxcy: torch.Tensor, height: int, width: int,
                       images: torch.Tensor | None = None) -> torch.Tensor:
    """The rays (+ [2*rgb - 1] with images): [b, v, 9 or 12, h, w]."""
    rays = lact_rays(c2w, fxfycxcy, height, width)
    if images is None:
        return rays
    return torch.cat([rays.to(images.dtype), images * 2.0 - 1.0], dim=2)


class ViewAttention(nn.Module):
    """Self-attention within one view; RMSNorm on queries and keys per head with eps the machine
    epsilon of their dtype (PyTorch's RMSNorm with eps=None), not LVSM's 1e-5. Laid out as the
    official code lays it out, so that the tokens the fast weights learn from match it to the bit."""

    def __init__(self, dim: int, head_dim: int, qk_norm: bool):
        super().__init__()
        self.head_dim = head_dim
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.q_norm = nn.RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(head_dim) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, cameras: CameraTransforms | None = None) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, d // self.head_dim, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if cameras is None:
            out = F.scaled_dot_product_attention(q, k, v)
        else:  # PRoPE within one view: its projective part cancels, its 2D RoPE stays
            out = cameras.outputs(F.scaled_dot_product_attention(cameras.queries(q), cameras.keys_values(k), cameras.keys_values(v)))
        return self.proj(out.transpose(1, 2).reshape(b, s, d))


def newton_schulz(g: torch.Tensor, steps: int, dtype: torch.dtype = torch.bfloat16, matmul=torch.matmul) -> torch.Tensor:
    """Approximate orthogonalisation of g [b, r, c] by the quintic Newton-Schulz iteration, computed in
    `dtype`: bfloat16 as the official code does it (the cast moves renders by about 6e-3, so it is part
    of the model), float32 for a step whose rounding does not depend on the machine's bfloat16 kernel.
    `matmul` multiplies the bfloat16 matrices (see `bfloat16_matmul`). Returns `dtype`."""
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    x = g.to(dtype)
    tall = g.shape[1] > g.shape[2]
    if tall:
        x = x.transpose(1, 2)
    x = x / (x.norm(dim=(1, 2), keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = matmul(x, x.transpose(1, 2))
        # (c * gram) @ gram, as Python reads the official `c * A @ A`: a different bfloat16 rounding from c * (A @ A).
        x = a * x + matmul(b * gram + matmul(c * gram, gram), x)
    return x.transpose(1, 2) if tall else x


def _float32_kernel_matmul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A product of bfloat16 matrices accumulated in float32 by the float32 kernel, rounded to bfloat16."""
    return torch.matmul(x.float(), y.float()).bfloat16()


# oneDNN's ONEDNN_MAX_CPU_ISA values that keep the bfloat16 units (AVX512_CORE_BF16 and above).
_BFLOAT16_ISAS = ("BF16", "AMX", "AVX10", "FP16", "ALL", "DEFAULT")


@functools.cache
def cpu_has_bfloat16_units() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX-512 BF16 or AMX, as PyTorch reads
    them), and oneDNN may use them (ONEDNN_MAX_CPU_ISA does not cap it below AVX512_CORE_BF16)."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if isa and not any(tag in isa for tag in _BFLOAT16_ISAS):
        return False
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolved_bfloat16_kernel(kernel: str, device: torch.device) -> str:
    """`native` or `float32`: which kernel sums the bfloat16 products on `device` (see `bfloat16_matmul`)."""
    if device.type != "cpu":
        return "native"
    if kernel == "auto":
        return "native" if cpu_has_bfloat16_units() else "float32"
    return kernel


def bfloat16_matmul(device: torch.device, kernel: str = "auto"):
    """The bfloat16 products of the Newton-Schulz step. Both kernels take bfloat16 operands, accumulate
    in float32 and round the result to bfloat16; they differ only in the order of the sums, which the
    step turns into about 3e-3 in the renders, as a move to another CPU does. On a CPU without
    bfloat16 units PyTorch's bfloat16 batched matmul runs 3-8x slower than float32 (and slows a whole
    training step far more), so there `auto` lets the float32 kernel do the sums; on a CPU with them,
    and on accelerators, the native kernel is as fast or faster, and it is what the official code runs."""
    return torch.matmul if resolved_bfloat16_kernel(kernel, device) == "native" else _float32_kernel_matmul


def silu_derivative_times(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """grad * silu'(x), silu'(x) = sigmoid(x) (1 + x (1 - sigmoid(x)))."""
    sigma = torch.sigmoid(x)
    return grad * sigma * (1 + x * (1 - sigma))


class FastWeightLayer(nn.Module):
    """Fast-weight heads, each f(x) = (silu(x w0) * (x w2)) w1 on its slice of the width: w0, w2
    [heads, head_dim, ratio*head_dim] and w1 [heads, ratio*head_dim, head_dim] are the initial (slow)
    weights. Everything per token or per weight (normalisation, learning rates, the step, Newton-Schulz,
    the output RMSNorm) runs per head; the heads merge only in the output projection."""

    def __init__(self, dim: int, heads: int, ratio: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        width, hidden = self.head_dim, ratio * self.head_dim
        gain = math.sqrt(2)
        self.w0 = nn.Parameter(torch.randn(heads, width, hidden) * gain / math.sqrt(width))
        self.w1 = nn.Parameter(torch.randn(heads, hidden, width) * gain / math.sqrt(hidden))
        self.w2 = nn.Parameter(torch.randn(heads, width, hidden) * gain / math.sqrt(width))
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.lr = nn.Linear(dim, 3 * heads)  # per-token learning rates of w0, w1, w2, per head
        self.out_norm = nn.RMSNorm(width, eps=1e-5)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.base_lr_inv = BASE_LR + math.log(-math.expm1(-BASE_LR))  # inverse softplus
        self.step_dtype, self.kernel = torch.bfloat16, "auto"  # set by LaCT from its config

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """[b, L, heads*head_dim] -> [b, heads, L, head_dim]."""
        b, length, _ = x.shape
        return x.view(b, length, self.heads, self.head_dim).transpose(1, 2)

    def _unit(self, x: torch.Tensor) -> torch.Tensor:
        x = self._split(x)
        return x / (x.norm(dim=-1, keepdim=True) + 1e-5).to(x.dtype)

    def queries_keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per head: [b, heads, L, head_dim] each."""
        q, k, v = F.silu(self.qkv(x)).chunk(3, dim=-1)
        return self._unit(q), self._unit(k), self._split(v)

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """The queries alone (rendering needs no keys, values or learning rates)."""
        return self._unit(F.silu(F.linear(x, self.qkv.weight[: x.shape[-1]])))

    def gradients(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> FastWeights:
        """The learning-rate-weighted gradients of the inner loss -v . f(k) for w0, w1, w2, summed over a
        scene's input tokens x [b, L, dim], k, v [b, heads, L, head_dim] (at the initial weights: a sum
        over tokens, so over views). Each [b, heads, ., .]."""
        with _float32(x.device):
            lr = F.softplus(self.lr(x.float()) + self.base_lr_inv)
        b, length, _ = lr.shape
        lr0, lr1, lr2 = lr.view(b, length, 3, self.heads).permute(2, 0, 3, 1).unsqueeze(-1)  # [b, heads, L, 1] each
        w0, w1, w2 = self.initial(b)
        gate = k @ w0
        up = k @ w2
        hidden = F.silu(gate) * up
        dhidden = v @ w1.transpose(-1, -2)
        dup = dhidden * F.silu(gate)
        dgate = silu_derivative_times(dhidden * up, gate)
        return ((k * lr0).transpose(-1, -2) @ dgate, (hidden * lr1).transpose(-1, -2) @ v,
                (k * lr2).transpose(-1, -2) @ dup)

    def step(self, gradients: FastWeights) -> FastWeights:
        """The fast weights after one step: each gradient orthogonalised (per batch element and head),
        added to the initial weight, and the sum's columns brought back to the initial weight's norms."""
        initial = self.initial(gradients[0].shape[0])
        matmul = bfloat16_matmul(gradients[0].device, self.kernel) if self.step_dtype == torch.bfloat16 else torch.matmul
        return tuple(self._renormalized(w + newton_schulz(g.flatten(0, 1), NEWTON_SCHULZ_STEPS, self.step_dtype,
                                                          matmul).view(g.shape), slow)
                     for w, g, slow in zip(initial, gradients, (self.w0, self.w1, self.w2)))

    def initial(self, batch: int) -> FastWeights:
        return tuple(w.expand(batch, -1, -1, -1) for w in (self.w0, self.w1, self.w2))

    @staticmethod
    def _renormalized(w: torch.Tensor, initial: torch.Tensor) -> torch.Tensor:
        return w / (w.norm(dim=-2, keepdim=True) + 1e-5) * initial.detach().norm(dim=-2, keepdim=True)

    def apply_weights(self, weights: FastWeights, q: torch.Tensor) -> torch.Tensor:
        """The fast-weight MLP on queries q [b, heads, L, head_dim], the output RMSNorm per head, then
        the heads merged by the output projection: [b, L, dim]."""
        w0, w1, w2 = weights
        out = self.out_norm((F.silu(q @ w0) * (q @ w2)) @ w1)
        b, heads, length, width = out.shape
        return self.proj(out.transpose(1, 2).reshape(b, length, heads * width))


class LaCTBlock(nn.Module):
    """x += attn(LN(x)) within each view; x += fast(LN(x)) over the scene; x += mlp(LN(x))."""

    def __init__(self, c: LaCTConfig):
        super().__init__()
        self.attn_norm = layer_norm(c.dim, affine=True)
        self.attn = ViewAttention(c.dim, c.head_dim, c.qk_norm)
        self.fast_norm = layer_norm(c.dim, affine=True)
        self.fast = FastWeightLayer(c.dim, c.fast_weight_heads, c.fast_weight_ratio)
        self.mlp_norm = layer_norm(c.dim, affine=True)
        self.mlp = MLP(c.dim, c.mlp_ratio)

    def forward(self, x: torch.Tensor, batch: int, weights: FastWeights | None = None, finish: bool = True,
                prior: FastWeights | None = None, cameras: CameraTransforms | None = None
                ) -> tuple[torch.Tensor, FastWeights, FastWeights | None]:
        """x: [batch*views, P, dim], one view per row. Without `weights` (encoding input views), the
        fast weights take their step on x's tokens, plus the gradient sums `prior` when given (views
        encoded earlier), and are returned with the gradient sums; with them (rendering), they are
        applied as given. `finish=False` stops after the step: the last block's input tokens feed
        nothing else. `cameras`: each row's view transforms, for PRoPE in the attention."""
        x = x + self.attn(self.attn_norm(x), cameras)
        rows, p, d = x.shape
        scene = self.fast_norm(x).reshape(batch, -1, d)
        gradients = None
        if weights is None:
            q, k, v = self.fast.queries_keys_values(scene)
            gradients = self.fast.gradients(scene, k, v)
            if prior is not None:
                gradients = tuple(old + new for old, new in zip(prior, gradients))
            weights = self.fast.step(gradients)
            if not finish:
                return x, weights, gradients
        else:
            q = self.fast.queries(scene)
        x = x + self.fast.apply_weights(weights, q).reshape(rows, p, d)
        return x + self.mlp(self.mlp_norm(x)), weights, gradients


@dataclass(frozen=True)
class LaCTConfig(VariantConfig):
    """`fast_weight_ratio`: the hidden width of the fast-weight SwiGLU over each head's width (2 or 4 in
    the released scene models); `fast_weight_heads` split `dim` (one in every released model). How the
    Newton-Schulz step computes: `newton_schulz_dtype` bfloat16 (the official step) or float32 (portable
    parity); on a CPU, `bfloat16_kernel` `native` (PyTorch's bfloat16 matmul, as the official code),
    `float32` (the same bfloat16 products summed by the float32 kernel) or `auto` (native where the CPU
    has bfloat16 units)."""
    depth: int = 24
    fast_weight_ratio: int = 2
    fast_weight_heads: int = 1
    newton_schulz_dtype: str = "bfloat16"
    bfloat16_kernel: str = "auto"

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        **VariantConfig.CHOICES,
        "newton_schulz_dtype": ("bfloat16", "float32"),
        "bfloat16_kernel": ("auto", "native", "float32"),
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dim % self.fast_weight_heads:
            raise ValueError(f"LaCTConfig.dim={self.dim} is not divisible by fast_weight_heads={self.fast_weight_heads}")


LACT_PRESETS = {
    "paper": LaCTConfig(),
    "small": LaCTConfig(**SHARED_SIZES["small"], depth=6),
    "small128": LaCTConfig(**SHARED_SIZES["small128"], depth=6),
    "tiny": LaCTConfig(**SHARED_SIZES["tiny"], depth=2),
    # Two blocks with a fast-weight SwiGLU 3x wide: 0.94 M parameters, the size of the other variants at
    # this preset (the released ratio 2 gives 0.85 M at two blocks, 1.21 M at three).
    "study": LaCTConfig(**SHARED_SIZES["study"], depth=2, fast_weight_ratio=3),
}


# --------------------------------------------------------------------- the official code, for parity


def official_yaml(data: dict, config: LaCTConfig, n_input: int, n_target: int) -> dict:
    """LaCT's flat YAML (patch_size, dim, layers, block_config: attention, fast weights, MLP) with our sizes."""
    data.update(patch_size=config.patch_size, dim=config.dim, layers=config.depth)
    for module in data["block_config"]:
        params = module["params"]
        if "use_qk_norm" in params:
            params.update(head_dim=config.head_dim, use_qk_norm=config.qk_norm)
        elif "muon_update_steps" in params:
            params.update(head_dim=config.dim // config.fast_weight_heads, inter_multi=config.fast_weight_ratio)
        else:
            params.update(inter_multi=config.mlp_ratio)
    return {"model": data}


def official_build(load: Loader, data: dict) -> nn.Module:
    load("lact_ttt")  # its block list names classes by module: loaded (and made eager) before the model
    model = data["model"]
    return load("model").LaCTLVSM(model["patch_size"], model["dim"], model["layers"], model["block_config"])


def official_render(model: nn.Module, views: Views):
    images, in_c2w, in_k, tgt_c2w, tgt_k = views
    # It writes its rays into the dicts: fresh ones per call.
    return lambda: model({"image": images, "c2w": in_c2w, "fxfycxcy": in_k}, {"c2w": tgt_c2w, "fxfycxcy": tgt_k})


def official_extra_flops(model: "LaCT", n: int, m: int, batch: int, image_size: int) -> int:
    """What the official LaCT forward executes beyond ours (its rays are a bmm in both): it tokenizes target
    views with all 12 channels (the image ones zero) where ours reads the 9 pose columns; computes keys,
    values and learning rates for target tokens, which need only queries; and in its last block applies the
    fast weights, output projection and MLP to the input tokens, whose outputs nothing reads."""
    c = model.config
    p = model.view_tokens(image_size)
    targets, inputs = batch * m * p, batch * n * p
    tokenizer = targets * 3 * c.patch_size ** 2 * c.dim
    target_keys_values_rates = c.depth * targets * (2 * c.dim * c.dim + 3 * c.fast_weight_heads * c.dim)
    return 2 * (tokenizer + target_keys_values_rates + model._apply_flops(inputs).macs)


NEWTON_SCHULZ_FUNCTION, BFLOAT16_CAST = "zeropower_via_newtonschulz5", "G.bfloat16()"


@contextlib.contextmanager
def official_float32_step(load: Loader) -> Iterator[None]:
    """The official Newton-Schulz step in float32 for the block: their own function's source with
    `G.float()` in place of `G.bfloat16()` (the reference fixtures' `render_ns_float32` were made the same way)."""
    module = load("lact_ttt")
    original = getattr(module, NEWTON_SCHULZ_FUNCTION)
    source = textwrap.dedent(inspect.getsource(original))
    if BFLOAT16_CAST not in source:
        raise FileNotFoundError(f"{module.__file__}: {NEWTON_SCHULZ_FUNCTION} no longer casts with {BFLOAT16_CAST}; "
                                "this checkout is not the LaCT code the float32 step was defined for")
    source = "\n".join(line for line in source.replace(BFLOAT16_CAST, "G.float()").splitlines() if not line.startswith("@"))
    namespace: dict[str, Any] = dict(vars(module))
    exec(compile(source, module.__file__, "exec"), namespace)  # noqa: S102  (their function, one cast changed)
    setattr(module, NEWTON_SCHULZ_FUNCTION, namespace[NEWTON_SCHULZ_FUNCTION])
    try:
        yield
    finally:
        setattr(module, NEWTON_SCHULZ_FUNCTION, original)


@register("lact", config=LaCTConfig, presets=LACT_PRESETS, card=ModelCard(
    label="LaCT", color="tab:green", paper=LACT_PAPER, code=LACT_CODE, official_params=312_298_056))
class LaCT(NVSModel):
    """Cameras: `plucker` (the released models) or `plucker+prope`. Its attention stays inside one view,
    where PRoPE's projective part cancels and only its 2D RoPE remains, and its only path between views is
    the fast weights, where no attention runs: with `prope` or `gta` alone its views would never see each
    other's pose, so those are not offered. `plucker+prope` keeps the raymaps and adds PRoPE (2D RoPE, in
    effect) to every view's attention."""
    camera_encodings = ("plucker", "plucker+prope")
    scene_state: ClassVar[str] = "fast weights"
    capabilities = frozenset({"extend_scene", "official_weights", "analytic_flops"})
    official_code = OfficialCode(
        "a1600012888/LaCT", "OFFICIAL_LACT", "lact_nvs/config/lact_l24_d768_ttt2x.yaml", yaml=official_yaml,
        build=official_build, render=official_render, extra_flops=official_extra_flops, root="lact_nvs",
        marker="model.py", compiled=True, config_from_yaml=False, portable=official_float32_step)
    depth_fields = {"depth": "blocks"}
    input_channels = LACT_CHANNELS
    official_key_map = [
        (r"^input_linear\.", "input_tokenizer.proj."),
        (r"^input_layernorm\.", "input_norm."),
        (r"^image_token_decoder\.0\.", "head.norm."),
        (r"^image_token_decoder\.1\.", "head.proj."),
        (r"\.module_list\.0\.ln\.", ".attn_norm."),
        (r"\.module_list\.0\.f\.to_qkv\.", ".attn.qkv."),
        (r"\.module_list\.0\.f\.c_proj\.", ".attn.proj."),
        (r"\.module_list\.0\.f\.", ".attn."),
        (r"\.module_list\.1\.ln\.", ".fast_norm."),
        (r"\.module_list\.1\.f\.to_qkv\.", ".fast.qkv."),
        (r"\.module_list\.1\.f\.c_proj\.", ".fast.proj."),
        (r"\.module_list\.1\.f\.lr_fc\.", ".fast.lr."),
        (r"\.module_list\.1\.f\.o_norm\.", ".fast.out_norm."),
        (r"\.module_list\.1\.f\.", ".fast."),
        (r"\.module_list\.2\.ln\.", ".mlp_norm."),
        (r"\.module_list\.2\.f\.c_fc\.", ".mlp.fc_in."),
        (r"\.module_list\.2\.f\.c_proj\.", ".mlp.fc_out."),
    ]

    def __init__(self, config: LaCTConfig):
        super().__init__(config)
        c = config
        self.input_norm = layer_norm(c.dim, affine=True)
        self.blocks = nn.ModuleList(LaCTBlock(c) for _ in range(c.depth))
        self.head = RenderHead(c.dim, c.patch_size, norm_affine=True)
        self._init_weights()
        self._apply_numerics()

    def build_tokenizers(self, config: LaCTConfig) -> None:
        """One tokenizer for both kinds of view (targets leave the image channels at zero)."""
        self.input_tokenizer = Tokenizer(LACT_CHANNELS, config.patch_size, config.dim)

    def _init_weights(self) -> None:
        """Official init: linears N(0, 0.02) with zero biases; the three residual output projections
        of each block N(0, 0.02 / sqrt(3 depth)) with `depth_init`; fast weights Kaiming-like."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.config.depth_init:
            std = 0.02 / math.sqrt(3 * self.config.depth)
            for block in self.blocks:
                for proj in (block.attn.proj, block.fast.proj, block.mlp.fc_out):
                    nn.init.normal_(proj.weight, mean=0.0, std=std)

    def _apply_numerics(self) -> None:
        for block in self.blocks:
            block.fast.step_dtype = getattr(torch, self.config.newton_schulz_dtype)
            block.fast.kernel = self.config.bfloat16_kernel

    def with_newton_schulz(self, dtype: torch.dtype) -> "LaCT":
        """The Newton-Schulz step in `dtype`: torch.bfloat16, the official step (the default), or
        torch.float32, whose renders do not depend on the machine's bfloat16 kernel (the official code
        with `G.float()` for `G.bfloat16()`)."""
        names = {torch.bfloat16: "bfloat16", torch.float32: "float32"}
        if dtype not in names:
            raise ValueError(f"with_newton_schulz: expected torch.bfloat16 or torch.float32, got {dtype}")
        self.config = replace(self.config, newton_schulz_dtype=names[dtype])
        self._apply_numerics()
        return self

    @contextlib.contextmanager
    def portable_numerics(self) -> Iterator[None]:
        """The float32 Newton-Schulz step for the block: renders then do not depend on the CPU's bfloat16 kernel."""
        step = self.config.newton_schulz_dtype
        self.with_newton_schulz(torch.float32)
        try:
            yield
        finally:
            self.with_newton_schulz(getattr(torch, step))

    def with_bfloat16_kernel(self, kernel: str) -> "LaCT":
        """Which kernel sums the bfloat16 step's products on a CPU: `native` (PyTorch's bfloat16 matmul, as
        the official code), `float32`, or `auto` (see `bfloat16_matmul`). Accelerators always run native."""
        self.config = replace(self.config, bfloat16_kernel=kernel)
        self._apply_numerics()
        return self

    @classmethod
    def numerics_of(cls, config: LaCTConfig, device: torch.device | str) -> dict[str, str]:
        step = config.newton_schulz_dtype
        if step == "bfloat16":  # only the bfloat16 step's products have a kernel to choose
            step += f" ({resolved_bfloat16_kernel(config.bfloat16_kernel, torch.device(device))} kernel)"
        return {"newton_schulz": step}

    # --- encode once, render many ----------------------------------------------------------
    def build_scene(self, input_images, input_c2w, input_fxfycxcy, keep_gradients: bool = False) -> LaCTScene:
        """Input views [b, n, ...] -> each block's fast weights after their step on those views
        (with `keep_gradients`, also the gradient sums that `extend_scene` adds to)."""
        return self._encode(input_images, input_c2w, input_fxfycxcy, keep_gradients=keep_gradients)

    def extend_scene(self, state: SceneState, images, c2w, fxfycxcy) -> SceneState:
        """An approximate state for the scene with views [b, k, ...] added, from the new views alone:
        each block's gradient sums over the earlier views are kept and the new views' are added.

        Not the state `encode_scene` builds from all the views, and not what LaCT was trained with:
        from the second block on, the earlier views' tokens depend on the fast weights of the blocks
        before, which adding a view changes, so their kept gradients are stale. Exact with one
        block. LaCT's state is rebuilt when a view is added; this measures what skipping that costs."""
        self.check_own_state(state, "extend_scene")
        if state.content.gradients is None:
            raise ValueError("extend_scene: the state keeps no gradient sums; encode it with keep_gradients=True")
        b, k, h, w = self.check_inputs(images, c2w, fxfycxcy)
        if b != state.batch or (h, w) != (state.height, state.width):
            raise ValueError(f"images: expected shape [{state.batch}, k, 3, {state.height}, {state.width}], "
                             f"got {list(images.shape)}")
        content = self._encode(images, c2w, fxfycxcy, keep_gradients=True, prior=state.content.gradients)
        return SceneState(state.variant, b, state.views + k, h, w, content)

    def _encode(self, input_images, input_c2w, input_fxfycxcy, keep_gradients: bool = False,
                prior: list[FastWeights] | None = None) -> LaCTScene:
        b, n, _, h, w = input_images.shape
        self.count_encoded_views(n)
        x = self.input_norm(self.input_tokenizer(lact_view_features(input_c2w, input_fxfycxcy, h, w, input_images)))
        cameras = self._cameras(input_c2w, input_fxfycxcy, h, w)
        states, sums = [], []
        for index, block in enumerate(self.blocks):
            x, weights, gradients = self.run_block(block, x, b, None, index < len(self.blocks) - 1,
                                                   None if prior is None else prior[index], cameras)
            states.append(weights)
            sums.append(gradients)
        return LaCTScene(states, h, w, sums if keep_gradients else None)

    def render_from_scene(self, content: LaCTScene, target_c2w, target_fxfycxcy, height: int, width: int) -> torch.Tensor:
        return self._render(content, target_c2w, target_fxfycxcy)

    def _render(self, state: LaCTScene, target_c2w, target_fxfycxcy) -> torch.Tensor:
        b, m, h, w = state.batch, target_c2w.shape[1], state.height, state.width
        x = self.input_norm(self.target_tokens(target_c2w, target_fxfycxcy, h, w))
        cameras = self._cameras(target_c2w, target_fxfycxcy, h, w)
        for block, weights in zip(self.blocks, state.fast_weights):
            x, _, _ = self.run_block(block, x, b, weights, True, None, cameras)
        return self.head(x, h, w).reshape(b, m, RGB_CHANNELS, h, w)

    def _cameras(self, c2w: torch.Tensor, fxfycxcy: torch.Tensor, height: int, width: int) -> CameraTransforms | None:
        """Each view's PRoPE transforms, one view per row as the blocks lay tokens out; None with raymaps alone."""
        if not uses_prope(self.config.camera_encoding):
            return None
        return self.view_transforms(c2w.flatten(0, 1)[:, None], fxfycxcy.flatten(0, 1)[:, None], height, width)

    def forward(self, input_images, input_c2w, input_fxfycxcy, target_c2w, target_fxfycxcy):
        self.check_views(input_images, input_c2w, input_fxfycxcy, target_c2w, target_fxfycxcy)
        return self._render(self._encode(input_images, input_c2w, input_fxfycxcy), target_c2w, target_fxfycxcy)

    def target_tokens(self, c2w: torch.Tensor, fxfycxcy: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Target cameras [b, m, ...] -> tokens [b*m, P, dim] through the shared tokenizer, reading only
        its pose columns (the image channels of a target view are zeros)."""
        p = self.config.patch_size
        weight = self.input_tokenizer.proj.weight
        pose_weight = weight.view(weight.shape[0], p * p, LACT_CHANNELS)[..., :POSE_CHANNELS].reshape(weight.shape[0], -1)
        features = lact_view_features(c2w, fxfycxcy, height, width).to(weight.dtype)
        return F.linear(patchify(features.flatten(0, 1), p), pose_weight)

    # --- cost ------------------------------------------------------------------------------
    def _ray_flops(self, views: int, image_size: int | None) -> F_.FlopEstimate:
        """Each pixel's direction rotated to the world frame (a 3x3 matrix product, as the official code)."""
        size = image_size or self.config.image_size
        return F_.linear(views * size * size, 3, 3)

    def _block_mixing_flops(self, views: int, p: int) -> F_.FlopEstimate:
        """Per block: self-attention within each of `views` views of p tokens (with PRoPE's transforms)."""
        d, tokens = self.config.dim, views * p
        prope = transform_macs(tokens, d) if uses_prope(self.config.camera_encoding) else 0
        return F_.linear(tokens, d, 3 * d) + F_.attention(p, p, d).scaled(views) + F_.linear(tokens, d, d) + F_.FlopEstimate(0, prope)

    def _camera_flops(self, views: int) -> F_.FlopEstimate:
        """PRoPE's P = K @ viewmat, once per view."""
        return F_.FlopEstimate(0, 64 * views if uses_prope(self.config.camera_encoding) else 0)

    def _fast_weight_sizes(self) -> tuple[int, int, int]:
        """Heads, each head's width, each head's hidden width."""
        c = self.config
        width = c.dim // c.fast_weight_heads
        return c.fast_weight_heads, width, c.fast_weight_ratio * width

    def _apply_flops(self, tokens: int) -> F_.FlopEstimate:
        """Applying the fast weights to `tokens` queries, the output projection and the MLP."""
        c = self.config
        return (F_.fast_weight_apply(tokens, *self._fast_weight_sizes()) + F_.linear(tokens, c.dim, c.dim)
                + F_.mlp(tokens, c.dim, c.mlp_ratio))

    def encode_flops(self, n_input: int, batch: int = 1, image_size: int | None = None) -> F_.FlopEstimate:
        """Tokenizing n input views and every block's fast-weight step on them."""
        c, p = self.config, self.view_tokens(image_size)
        tokens = batch * n_input * p
        per_block = (self._block_mixing_flops(batch * n_input, p) + F_.linear(tokens, c.dim, 3 * c.dim)
                     + F_.linear(tokens, c.dim, 3 * c.fast_weight_heads)
                     + F_.fast_weight_update(batch, tokens // batch, *self._fast_weight_sizes(), NEWTON_SCHULZ_STEPS))
        return (self._ray_flops(batch * n_input, image_size) + self._camera_flops(batch * n_input)
                + F_.linear(tokens, LACT_CHANNELS * c.patch_size ** 2, c.dim)
                + per_block.scaled(c.depth)
                + self._apply_flops(tokens).scaled(c.depth - 1))

    def render_flops(self, n_target: int, batch: int = 1, image_size: int | None = None) -> F_.FlopEstimate:
        """Rendering n target views from encoded fast weights: independent of the number of input views."""
        c, p = self.config, self.view_tokens(image_size)
        tokens = batch * n_target * p
        per_block = self._block_mixing_flops(batch * n_target, p) + F_.linear(tokens, c.dim, c.dim) + self._apply_flops(tokens)
        return (self._ray_flops(batch * n_target, image_size) + self._camera_flops(batch * n_target)
                + F_.linear(tokens, POSE_CHANNELS * c.patch_size ** 2, c.dim)
                + per_block.scaled(c.depth)
                + F_.linear(tokens, c.dim, RGB_CHANNELS * c.patch_size ** 2))

    def analytic_flops(self, n_input: int, n_target: int, batch: int = 1, image_size: int | None = None) -> F_.FlopEstimate:
        return self.encode_flops(n_input, batch, image_size) + self.render_flops(n_target, batch, image_size)
