"""Efficient-LVSM: a dual-stream model. Input views attend only to themselves; each target view
runs self-attention, then cross-attention to all input views' states at the same depth
(layer-wise co-refinement), then an MLP (Jia et al., ICLR 2026)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from . import flops as F
from .base import NVSModel
from .config import CAMERA_ENCODINGS, SHARED_SIZES, VariantConfig
from .official import OfficialCode, lvsm_official_batch, lvsm_official_build, lvsm_official_yaml, lvsm_rays_bmm_flops
from .layers import SelfAttentionBlock, SelfCrossBlock, init_depth_scaled, init_weights
from .lvsm_decoder_only import EFFICIENCY_SETTING, EFFICIENCY_SOURCE, EFFICIENT_RE10K_SETTING, objects_setting
from .prope import transform_macs, uses_prope
from .registry import ModelCard, Published, register
from .tokens import RGB_CHANNELS, RenderHead, token_channels

KeysValues = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [b, heads, n*P, head_dim]


EFFICIENT_LVSM_PAPER = 'Jia et al., "Efficient-LVSM", ICLR 2026'
EFFICIENT_LVSM_CODE = "Efficient-LVSM release (non-commercial licence)"
OBJECTS_UNVERIFIED = "secondary summaries of the Efficient-LVSM paper (objects, 512 px): unverified"


@dataclass(frozen=True)
class EfficientLVSMConfig(VariantConfig):
    stream_depth: int = 12  # blocks in each stream: intra-view input blocks, and per-target self+cross blocks


EFFICIENT_LVSM_PRESETS = {
    "paper": EfficientLVSMConfig(),
    "small": EfficientLVSMConfig(**SHARED_SIZES["small"], stream_depth=3),
    "small128": EfficientLVSMConfig(**SHARED_SIZES["small128"], stream_depth=3),
    "tiny": EfficientLVSMConfig(**SHARED_SIZES["tiny"], stream_depth=2),
    "study": EfficientLVSMConfig(**SHARED_SIZES["study"], stream_depth=2),
}


def official_render(model: nn.Module, views: tuple[torch.Tensor, ...]):
    """Efficient-LVSM's release splits a batch into inputs and targets itself before rendering."""
    batch = lvsm_official_batch(views)

    def call() -> torch.Tensor:
        inputs, targets = model.process_data(batch, has_target_image=False, target_has_input=False, compute_rays=True)
        return model(inputs, targets, has_target_image=False, train=False).render
    return call


@register("efficient_lvsm", config=EfficientLVSMConfig, presets=EFFICIENT_LVSM_PRESETS, card=ModelCard(
    label="Efficient-LVSM", color="tab:blue", paper=EFFICIENT_LVSM_PAPER,
    code=EFFICIENT_LVSM_CODE, official_params=199_070_208,
    published={
        "re10k": Published("Efficient-LVSM release README (256 checkpoint; RealEstate10K, 2 input views, 256x256)",
                           {"psnr": 28.93, "ssim": 0.895, "lpips": 0.102}, EFFICIENT_RE10K_SETTING),
        "objects_abo": Published(OBJECTS_UNVERIFIED, {"psnr": 32.65, "ssim": 0.951, "lpips": 0.042}, objects_setting("ABO")),
        "objects_gso": Published(OBJECTS_UNVERIFIED, {"psnr": 32.92, "ssim": 0.973, "lpips": 0.021}, objects_setting("GSO")),
        "efficiency": Published(EFFICIENCY_SOURCE, {"params_m": 199, "latency_ms": 24.78, "gflops_thop": 1325},
                                EFFICIENCY_SETTING),
    }))
class EfficientLVSM(NVSModel):
    capabilities = frozenset({"incremental_views", "official_weights", "analytic_flops"})
    camera_encodings = CAMERA_ENCODINGS
    official_code = OfficialCode(
        "Ayakaee/Efficient-LVSM", "OFFICIAL_EFFICIENT_LVSM", "configs/Efficient-LVSM.yaml",
        yaml=lvsm_official_yaml(lambda c: {"n_layer": c.stream_depth}, dual_stream=True), build=lvsm_official_build,
        render=official_render, extra_flops=lvsm_rays_bmm_flops)
    depth_fields = {"stream_depth": "input_blocks"}
    target_states = ("target_blocks", "all")
    scene_state = "per-layer keys and values of the input stream"
    official_key_map = [
        (r"^rgbp_tokenizer\.1\.", "input_tokenizer.proj."),
        (r"^target_pose_tokenizer\.1\.", "target_tokenizer.proj."),
        (r"^image_token_decoder\.1\.", "head.proj."),
        (r"^input_self_attn_blocks\.", "input_blocks."),
        (r"^self_cross_blocks\.", "target_blocks."),
        (r"\.to_qkv\.weight$", ".qkv.weight"),
        (r"\.to_q\.weight$", ".q.weight"),
        (r"\.to_kv\.weight$", ".kv.weight"),
        (r"\.fc\.weight$", ".proj.weight"),
        (r"\.mlp\.mlp\.0\.weight$", ".mlp.fc_in.weight"),
        (r"\.mlp\.mlp\.2\.weight$", ".mlp.fc_out.weight"),
    ]

    def __init__(self, config: EfficientLVSMConfig):
        super().__init__(config)
        c = config
        self.input_blocks = nn.ModuleList(
            SelfAttentionBlock(c.dim, c.head_dim, c.mlp_ratio, c.qk_norm, norm_affine=False) for _ in range(c.stream_depth)
        )
        self.target_blocks = nn.ModuleList(
            SelfCrossBlock(c.dim, c.head_dim, c.mlp_ratio, c.qk_norm, norm_affine=False) for _ in range(c.stream_depth)
        )
        self.head = RenderHead(c.dim, c.patch_size, norm_affine=False)
        # The official init leaves the input stream at PyTorch's default Linear init.
        for module in (self.input_tokenizer, self.target_tokenizer, self.target_blocks, self.head):
            init_weights(module)
        if c.depth_init:
            init_depth_scaled(self.target_blocks)

    def forward(self, input_images, input_c2w, input_fxfycxcy, target_c2w, target_fxfycxcy):
        b, n, m, h, w = self.check_views(input_images, input_c2w, input_fxfycxcy, target_c2w, target_fxfycxcy)
        self.count_encoded_views(n)
        inputs = self.input_tokens(input_images, input_c2w, input_fxfycxcy)  # [b*n, P, d]
        targets = self.target_tokens(target_c2w, target_fxfycxcy, h, w)  # [b*m, P, d]
        per_view, context_cameras = self.cameras(input_c2w, input_fxfycxcy, h, w)
        target_cameras = self.cameras(target_c2w, target_fxfycxcy, h, w)
        for target_block, context in zip(self.target_blocks, self._context_states(inputs, per_view)):
            keys, values = target_block.context_keys_values(context.reshape(b, -1, context.shape[-1]), context_cameras)
            targets = self.run_block(target_block, targets, keys, values, m, *target_cameras)
        return self.head(targets, h, w).reshape(b, m, RGB_CHANNELS, h, w)

    def cameras(self, c2w: torch.Tensor, fxfycxcy: torch.Tensor, height: int, width: int) -> tuple[Any, Any]:
        """With PRoPE / GTA, the CameraTransforms of views [b, v, ...] one view per row ([b*v] sequences of
        P tokens) and of each batch element's v views together ([b] sequences of v*P tokens); else None, None."""
        c = self.config
        if not uses_prope(c.camera_encoding):
            return None, None
        grouped = self.view_transforms(c2w, fxfycxcy, height, width)
        return grouped.regrouped(lambda matrices: matrices.reshape(-1, 1, 4, 4)), grouped

    def _context_states(self, tokens: torch.Tensor, per_view) -> Iterator[torch.Tensor]:
        return self.context_states(tokens) if per_view is None else self.context_states(tokens, per_view)

    def context_states(self, tokens: torch.Tensor, cameras=None) -> Iterator[torch.Tensor]:
        """The input-stream states that target block l reads: those right after input block l
        (layer-wise co-refinement). A generator, so the two streams run interleaved and only one
        layer's input states are alive at a time. `cameras`: each input view's transforms (PRoPE / GTA)."""
        for input_block in self.input_blocks:
            tokens = self.run_block(input_block, tokens, *([cameras] if cameras is not None else []))
            yield tokens

    # --- encode once, render many; incremental inference -------------------------------------
    def encode_views(self, images, c2w, fxfycxcy) -> KeysValues:
        """Run input views [b, k, ...] through the input stream once; return, per layer, the
        cross-attention keys and values that the target stream reads: the scene state, and the KV
        cache that `incremental` concatenates views into (exact only because views never attend to
        each other)."""
        b, k = images.shape[:2]
        self.count_encoded_views(k)
        tokens = self.input_tokens(images, c2w, fxfycxcy)
        per_view, grouped = self.cameras(c2w, fxfycxcy, *images.shape[-2:])
        return [target_block.context_keys_values(context.reshape(b, -1, context.shape[-1]), grouped)
                for target_block, context in zip(self.target_blocks, self._context_states(tokens, per_view))]

    def build_scene(self, input_images, input_c2w, input_fxfycxcy) -> KeysValues:
        return self.encode_views(input_images, input_c2w, input_fxfycxcy)

    def render_from_scene(self, cache: KeysValues, target_c2w, target_fxfycxcy, height: int, width: int) -> torch.Tensor:
        """Render target views against per-layer keys and values; costs linear in the N*P cached keys."""
        b, m = target_c2w.shape[:2]
        targets = self.target_tokens(target_c2w, target_fxfycxcy, height, width)
        target_cameras = self.cameras(target_c2w, target_fxfycxcy, height, width)
        for (keys, values), target_block in zip(cache, self.target_blocks):
            targets = self.run_block(target_block, targets, keys, values, m, *target_cameras)
        return self.head(targets, height, width).reshape(b, m, RGB_CHANNELS, height, width)

    def incremental(self, target_c2w: torch.Tensor, target_fxfycxcy: torch.Tensor, height: int, width: int) -> "IncrementalRenderer":
        self.require("incremental_views")
        return IncrementalRenderer(self, target_c2w, target_fxfycxcy, height, width)

    # --- cost ------------------------------------------------------------------------------
    def incremental_flops(self, n_cached: int, n_new: int, n_target: int, batch: int = 1,
                          image_size: int | None = None) -> F.FlopEstimate:
        """Adding n_new views to a cache of n_cached, then rendering n_target views: the new views'
        input stream, and the target stream against all n_cached + n_new cached views."""
        return (self.input_stream_flops(n_new, batch, image_size)
                + self.target_stream_flops(n_cached + n_new, n_target, batch, image_size))

    def input_stream_flops(self, n_input: int, batch: int = 1, image_size: int | None = None) -> F.FlopEstimate:
        """Tokenizing and encoding n input views, including their cross-attention K/V projections."""
        c, p = self.config, self.view_tokens(image_size)
        tokens = batch * n_input * p
        return (F.linear(tokens, token_channels(c.camera_encoding)[0] * c.patch_size ** 2, c.dim)
                + (F.self_attention_block(batch * n_input, p, c.dim, c.mlp_ratio)
                   + F.linear(tokens, c.dim, 2 * c.dim)).scaled(c.stream_depth)
                + self._camera_flops(batch * n_input, tokens))

    def _camera_flops(self, views: int, tokens: int) -> F.FlopEstimate:
        """PRoPE / GTA on a stream: its attention's transforms (four roles) and the cross-attention's two per
        layer (keys and values of input views, queries and output of target views), and P = K @ viewmat once
        per view (PRoPE)."""
        c = self.config
        if not uses_prope(c.camera_encoding):
            return F.FlopEstimate(0, 0)
        per_layer = transform_macs(tokens, c.dim) * 6 // 4
        return F.FlopEstimate(0, per_layer * c.stream_depth + (64 * views if c.camera_encoding != "gta" else 0))

    def target_stream_flops(self, n_input: int, n_target: int, batch: int = 1, image_size: int | None = None) -> F.FlopEstimate:
        """Rendering n_target views against the K/V of n_input views."""
        c, p = self.config, self.view_tokens(image_size)
        views = batch * n_target
        tokens = views * p
        per_layer = (F.self_attention_block(views, p, c.dim, c.mlp_ratio)
                     + F.linear(tokens, c.dim, c.dim) + F.linear(tokens, c.dim, c.dim)
                     + F.attention(p, n_input * p, c.dim).scaled(views))
        return (F.linear(tokens, token_channels(c.camera_encoding)[1] * c.patch_size ** 2, c.dim) + per_layer.scaled(c.stream_depth)
                + F.linear(tokens, c.dim, RGB_CHANNELS * c.patch_size ** 2) + self._camera_flops(views, tokens))

    def analytic_flops(self, n_input: int, n_target: int, batch: int = 1, image_size: int | None = None) -> F.FlopEstimate:
        return (self.input_stream_flops(n_input, batch, image_size)
                + self.target_stream_flops(n_input, n_target, batch, image_size))


@register("efficient_lvsm_final_context", card=ModelCard(
    label="Efficient-LVSM (final context)", color="tab:cyan", paper=EFFICIENT_LVSM_PAPER,
    ablation_of="efficient_lvsm",
    published={"co_refinement": Published("Efficient-LVSM paper, co-refinement ablation (small scale)",
                                          {"psnr_vs_reference_db": "-1.3 to -2"})}))
class EfficientLVSMFinalContext(EfficientLVSM):
    """Ablation of layer-wise co-refinement: every target block cross-attends to the input stream's
    FINAL states (an encoder-decoder with per-layer K/V projections). Same weights and cost as
    Efficient-LVSM; the paper reports co-refinement ahead by about 1.3 to 2 dB."""
    scene_state = "per-layer keys and values of the input stream's final states"
    capabilities = frozenset({"incremental_views", "official_weights", "analytic_flops"})  # Efficient-LVSM's weights
    camera_encodings = ("plucker",)

    def context_states(self, tokens: torch.Tensor) -> Iterator[torch.Tensor]:
        for input_block in self.input_blocks:
            tokens = self.run_block(input_block, tokens)
        for _ in self.target_blocks:
            yield tokens


class IncrementalRenderer:
    """Start from the target cameras, add input views one or several at a time, render after each.

    Each added view goes through the input stream exactly once; the cache holds, per layer, the
    cross-attention keys and values of every view added so far. Exact, since input views never
    attend to each other.
    """

    def __init__(self, model: EfficientLVSM, target_c2w: torch.Tensor, target_fxfycxcy: torch.Tensor, height: int, width: int):
        p = model.config.patch_size
        if height % p or width % p:
            raise ValueError(f"incremental: height and width must be divisible by the patch size {p}, got {height}x{width}")
        if target_c2w.dim() != 4 or target_c2w.shape[-2:] != (4, 4):
            raise ValueError(f"target_c2w: expected shape [b, m, 4, 4], got {list(target_c2w.shape)}")
        if tuple(target_fxfycxcy.shape) != (*target_c2w.shape[:2], 4):
            raise ValueError(f"target_fxfycxcy: expected shape [{target_c2w.shape[0]}, {target_c2w.shape[1]}, 4], "
                             f"got {list(target_fxfycxcy.shape)}")
        model.check_cameras(target_c2w, target_fxfycxcy, "target_c2w", "target_fxfycxcy")
        self.model = model
        self.target_c2w, self.target_fxfycxcy = target_c2w, target_fxfycxcy
        self.height, self.width = height, width
        self.cache: KeysValues = []
        self.num_views = 0

    def add_views(self, images: torch.Tensor, c2w: torch.Tensor, fxfycxcy: torch.Tensor) -> "IncrementalRenderer":
        b = self.target_c2w.shape[0]
        if images.dim() != 5 or images.shape[0] != b or tuple(images.shape[2:]) != (3, self.height, self.width):
            raise ValueError(f"images: expected shape [{b}, k, 3, {self.height}, {self.width}], got {list(images.shape)}")
        k = images.shape[1]
        if tuple(c2w.shape) != (b, k, 4, 4):
            raise ValueError(f"c2w: expected shape [{b}, {k}, 4, 4], got {list(c2w.shape)}")
        if tuple(fxfycxcy.shape) != (b, k, 4):
            raise ValueError(f"fxfycxcy: expected shape [{b}, {k}, 4], got {list(fxfycxcy.shape)}")
        self.model.check_cameras(c2w, fxfycxcy, "c2w", "fxfycxcy")
        new = self.model.encode_views(images, c2w, fxfycxcy)
        if self.cache:
            self.cache = [(torch.cat([k0, k1], dim=2), torch.cat([v0, v1], dim=2)) for (k0, v0), (k1, v1) in zip(self.cache, new)]
        else:
            self.cache = new
        self.num_views += k
        return self

    def fork(self) -> "IncrementalRenderer":
        """A renderer holding the same views: adding views to it leaves this one as it is (the cache's
        tensors are never written in place, only replaced by longer ones)."""
        return copy.copy(self)

    def render(self) -> torch.Tensor:
        if not self.cache:
            raise RuntimeError("incremental: add at least one input view before rendering")
        return self.model.render_from_scene(self.cache, self.target_c2w, self.target_fxfycxcy, self.height, self.width)
