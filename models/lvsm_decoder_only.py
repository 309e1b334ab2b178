"""LVSM decoder-only: every target view is rendered in its own sequence [all input tokens ; target
tokens] under full self-attention (Jin et al., ICLR 2025)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import flops as F
from .base import NVSModel
from .config import CAMERA_ENCODINGS, SHARED_SIZES, VariantConfig
from .official import OfficialCode, lvsm_official_build, lvsm_official_render, lvsm_official_yaml, lvsm_rays_bmm_flops
from .layers import SelfAttentionBlock, init_depth_scaled, init_weights, layer_norm
from .prope import CameraTransforms, transform_macs, uses_prope
from .registry import ModelCard, Published, register
from .tokens import RGB_CHANNELS, RenderHead, token_channels

# Official LVSM key renames that every LVSM block shares.
LVSM_BLOCK_KEYS = [
    (r"\.norm1\.weight$", ".attn_norm.weight"),
    (r"\.norm2\.weight$", ".mlp_norm.weight"),
    (r"\.attn\.to_qkv\.weight$", ".attn.qkv.weight"),
    (r"\.attn\.fc\.weight$", ".attn.proj.weight"),
    (r"\.mlp\.mlp\.0\.weight$", ".mlp.fc_in.weight"),
    (r"\.mlp\.mlp\.2\.weight$", ".mlp.fc_out.weight"),
]
LVSM_TOKEN_KEYS = [
    (r"^image_tokenizer\.1\.", "input_tokenizer.proj."),
    (r"^target_pose_tokenizer\.1\.", "target_tokenizer.proj."),
    (r"^image_token_decoder\.0\.", "head.norm."),
    (r"^image_token_decoder\.1\.", "head.proj."),
]


LVSM_PAPER = 'Jin et al., "LVSM: A Large View Synthesis Model with Minimal 3D Inductive Bias", ICLR 2025'
LVSM_TABLE_1 = "LVSM paper Table 1 (RealEstate10K, 2 input views, 256x256)"
EFFICIENCY_SOURCE = ("Efficient-LVSM release README, efficiency table (GPU, view setting and resolution not stated; "
                     "GFLOPs counted with thop: linear layers only)")
OBJECTS_SOURCE = "LVSM paper, object-level table (512 px)"
# What each published table states of its setting (the harness's report.Setting fields); what it does not
# state is left out, so that no difference to a number of ours is ever computed across it.
RE10K_SETTING = {"model": {"preset": "paper", "image_size": 256, "patch_size": 8}, "views": {"n_input": 2},
                 "data": {"source": "re10k", "protocol": "lvsm"}, "training": {"steps": 100_000, "batch": 512}}
EFFICIENT_RE10K_SETTING = {**RE10K_SETTING, "training": {}}  # its training budget is given in GPU-days, not steps


def objects_setting(dataset: str) -> dict:
    return {"model": {"preset": "paper", "image_size": 512, "patch_size": 8}, "data": {"source": dataset}}


EFFICIENCY_SETTING = {"device": {"name": "GPU (model not stated)"}, "model": {"preset": "paper"}, "counting": "thop (linear layers)",
                      "note": "views and resolution not stated (N=6, M=7 at 256 px inferred from its GFLOPs)"}


@dataclass(frozen=True)
class DecoderOnlyConfig(VariantConfig):
    depth: int = 24  # self-attention blocks over [input tokens ; one target view's tokens]


DECODER_ONLY_PRESETS = {
    "paper": DecoderOnlyConfig(),
    "small": DecoderOnlyConfig(**SHARED_SIZES["small"], depth=6),
    "small128": DecoderOnlyConfig(**SHARED_SIZES["small128"], depth=6),
    "tiny": DecoderOnlyConfig(**SHARED_SIZES["tiny"], depth=2),
    "study": DecoderOnlyConfig(**SHARED_SIZES["study"], depth=4),
}


@register("lvsm_decoder_only", config=DecoderOnlyConfig, presets=DECODER_ONLY_PRESETS, card=ModelCard(
    label="LVSM decoder-only", color="tab:red", paper=LVSM_PAPER,
    code="github.com/Haian-Jin/LVSM (non-commercial licence)", official_params=170_795_520,
    published={
        "re10k": Published(LVSM_TABLE_1, {"psnr": 29.67, "ssim": 0.906, "lpips": 0.098}, RE10K_SETTING),
        "objects_abo": Published(OBJECTS_SOURCE, {"psnr": 32.1, "ssim": 0.938, "lpips": 0.045}, objects_setting("ABO")),
        "objects_gso": Published(OBJECTS_SOURCE, {"psnr": 32.36, "ssim": 0.962, "lpips": 0.028}, objects_setting("GSO")),
        "efficiency": Published(EFFICIENCY_SOURCE, {"params_m": 177, "latency_ms": 109.37, "gflops_thop": 8523},
                                EFFICIENCY_SETTING),
    }))
class LVSMDecoderOnly(NVSModel):
    capabilities = frozenset({"official_weights", "analytic_flops"})
    official_code = OfficialCode(
        "Haian-Jin/LVSM", "OFFICIAL_LVSM", "configs/LVSM_scene_decoder_only.yaml",
        yaml=lvsm_official_yaml(lambda c: {"n_layer": c.depth}), build=lvsm_official_build,
        render=lvsm_official_render, extra_flops=lvsm_rays_bmm_flops)
    camera_encodings = CAMERA_ENCODINGS
    depth_fields = {"depth": "blocks"}
    target_states = ("blocks", "last")  # sequences [inputs ; target]
    official_key_map = LVSM_TOKEN_KEYS + [
        (r"^transformer_input_layernorm\.", "input_norm."),
        (r"^transformer_blocks\.", "blocks."),
    ] + LVSM_BLOCK_KEYS

    def __init__(self, config: DecoderOnlyConfig, target_chunk: int | None = None):
        super().__init__(config)
        c = config
        self.input_norm = layer_norm(c.dim, affine=True)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(c.dim, c.head_dim, c.mlp_ratio, c.qk_norm, norm_affine=True) for _ in range(c.depth)
        )
        self.head = RenderHead(c.dim, c.patch_size, norm_affine=True)
        # Rendering M targets builds M sequences at once; a chunk size bounds memory, same result.
        self.target_chunk = target_chunk
        init_weights(self)
        if c.depth_init:
            init_depth_scaled(self.blocks)

    def forward(self, input_images, input_c2w, input_fxfycxcy, target_c2w, target_fxfycxcy, target_chunk: int | None = None):
        inputs, targets, h, w = self.sequence_tokens(input_images, input_c2w, input_fxfycxcy, target_c2w, target_fxfycxcy)
        cameras = None
        if uses_prope(self.config.camera_encoding):
            b, n = input_c2w.shape[:2]
            c, p = self.config, self.config.patch_size
            views = [self.view_transforms(c2w, k, h, w) for c2w, k in ((input_c2w, input_fxfycxcy), (target_c2w, target_fxfycxcy))]

            def cameras(start: int, chunk: int) -> CameraTransforms:
                """Each sequence's cameras, the input views then its target view, from the views' own transforms."""
                def per_sequence(matrices: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
                    inputs, targets = matrices
                    return torch.cat([inputs[:, None].expand(b, chunk, n, 4, 4), targets[:, start:start + chunk, None]],
                                     dim=2).reshape(b * chunk, n + 1, 4, 4)
                return CameraTransforms(per_sequence((views[0].P, views[1].P)), per_sequence((views[0].P_inverse, views[1].P_inverse)),
                                        w // p, h // p, c.head_dim)
        return self.render_target_sequences(inputs, targets, self.input_norm, self.blocks, targets_first=False,
                                            chunk=target_chunk or self.target_chunk, height=h, width=w, cameras=cameras)

    def analytic_flops(self, n_input: int, n_target: int, batch: int = 1, image_size: int | None = None) -> F.FlopEstimate:
        c, p = self.config, self.view_tokens(image_size)
        pp = c.patch_size ** 2
        sequences = batch * n_target
        inputs, targets = token_channels(c.camera_encoding)
        cost = (F.linear(batch * n_input * p, inputs * pp, c.dim)
                + F.linear(sequences * p, targets * pp, c.dim)
                + F.self_attention_block(sequences, (n_input + 1) * p, c.dim, c.mlp_ratio).scaled(c.depth)
                + F.linear(sequences * p, c.dim, RGB_CHANNELS * pp))
        if uses_prope(c.camera_encoding):  # the transforms in every layer, and P = K @ viewmat once per view (PRoPE)
            cost += F.FlopEstimate(0, transform_macs(sequences * (n_input + 1) * p, c.dim) * c.depth
                                   + (64 * batch * (n_input + n_target) if c.camera_encoding != "gta" else 0))
        return cost
