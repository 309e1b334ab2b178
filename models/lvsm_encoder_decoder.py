"""LVSM encoder-decoder: input views are compressed into learned latent tokens by an encoder; a
decoder reads them once per target view (Jin et al., ICLR 2025)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import flops as F
from .base import NVSModel
from .config import SHARED_SIZES, VariantConfig
from .official import OfficialCode, lvsm_official_build, lvsm_official_render, lvsm_official_yaml, lvsm_rays_bmm_flops
from .layers import SelfAttentionBlock, init_depth_scaled, init_weights, layer_norm
from .lvsm_decoder_only import LVSM_BLOCK_KEYS, LVSM_PAPER, LVSM_TABLE_1, LVSM_TOKEN_KEYS, OBJECTS_SOURCE
from .registry import ModelCard, Published, register
from .tokens import INPUT_CHANNELS, RGB_CHANNELS, TARGET_CHANNELS, RenderHead


@dataclass(frozen=True)
class EncoderDecoderConfig(VariantConfig):
    encoder_depth: int = 12  # blocks over [latents ; input tokens]
    decoder_depth: int = 12  # blocks over [latents ; one target view's tokens]
    n_latents: int = 3072
    # Std of the latent tokens at initialisation: 0.02 as in the official code; small from-scratch runs
    # may raise it (see experiments/convergence.yaml).
    latent_init_std: float = 0.02


ENCODER_DECODER_PRESETS = {
    "paper": EncoderDecoderConfig(),
    "small": EncoderDecoderConfig(**SHARED_SIZES["small"], encoder_depth=3, decoder_depth=3, n_latents=256),
    "tiny": EncoderDecoderConfig(**SHARED_SIZES["tiny"], encoder_depth=1, decoder_depth=1, n_latents=16),
}


@register("lvsm_encoder_decoder", config=EncoderDecoderConfig, presets=ENCODER_DECODER_PRESETS, card=ModelCard(
    label="LVSM encoder-decoder", color="tab:orange", paper=LVSM_PAPER,
    code="github.com/Haian-Jin/LVSM (non-commercial licence)", official_params=173_154_816,
    published={
        "re10k": Published(LVSM_TABLE_1, {"psnr": 28.58, "ssim": 0.893, "lpips": 0.114}),
        "objects_abo": Published(OBJECTS_SOURCE, {"psnr": 29.81, "ssim": 0.913, "lpips": 0.065}),
        "objects_gso": Published(OBJECTS_SOURCE, {"psnr": 29.32, "ssim": 0.933, "lpips": 0.052}),
    }))
class LVSMEncoderDecoder(NVSModel):
    """Cameras: Plücker rays only (`camera_encodings`). Its latent tokens have no camera, so attention
    between latents and input views has no relative transform to apply: a latent would see each view's
    absolute pose. A PRoPE form would tie the latents to one input view's frame (and so depend on which
    view comes first); it is not implemented."""
    capabilities = frozenset({"official_weights", "analytic_flops"})
    official_code = OfficialCode(
        "Haian-Jin/LVSM", "OFFICIAL_LVSM", "configs/LVSM_scene_encoder_decoder.yaml",
        yaml=lvsm_official_yaml(lambda c: {"encoder_n_layer": c.encoder_depth, "decoder_n_layer": c.decoder_depth,
                                           "n_latent_vectors": c.n_latents}),
        build=lvsm_official_build, render=lvsm_official_render, extra_flops=lvsm_rays_bmm_flops)
    depth_fields = {"encoder_depth": "encoder", "decoder_depth": "decoder"}
    target_states = ("decoder", "first")  # decoder sequences [target ; latents]
    scene_state = "latent tokens after the encoder"
    official_key_map = LVSM_TOKEN_KEYS + [
        (r"^n_light_field_latent$", "latents"),
        (r"^transformer_input_layernorm_decoder\.", "decoder_input_norm."),
        (r"^transformer_encoder\.", "encoder."),
        (r"^transformer_decoder\.", "decoder."),
    ] + LVSM_BLOCK_KEYS

    def __init__(self, config: EncoderDecoderConfig, target_chunk: int | None = None):
        super().__init__(config)
        c = config
        self.latents = nn.Parameter(torch.randn(c.n_latents, c.dim) * c.latent_init_std)
        self.encoder = nn.ModuleList(
            SelfAttentionBlock(c.dim, c.head_dim, c.mlp_ratio, c.qk_norm, norm_affine=True) for _ in range(c.encoder_depth)
        )
        self.decoder_input_norm = layer_norm(c.dim, affine=True)
        self.decoder = nn.ModuleList(
            SelfAttentionBlock(c.dim, c.head_dim, c.mlp_ratio, c.qk_norm, norm_affine=True) for _ in range(c.decoder_depth)
        )
        self.head = RenderHead(c.dim, c.patch_size, norm_affine=True)
        self.target_chunk = target_chunk
        init_weights(self)
        if c.depth_init:
            init_depth_scaled(self.encoder)
            init_depth_scaled(self.decoder)

    def encode(self, input_images, input_c2w, input_fxfycxcy) -> torch.Tensor:
        """The scene as latent tokens [b, n_latents, dim]; no LayerNorm in front of the encoder."""
        b, n = input_images.shape[:2]
        self.count_encoded_views(n)
        d, n_latents = self.config.dim, self.config.n_latents
        inputs = self.input_tokens(input_images, input_c2w, input_fxfycxcy).reshape(b, -1, d)
        seq = torch.cat([self.latents.unsqueeze(0).expand(b, -1, -1).to(inputs.dtype), inputs], dim=1)
        for block in self.encoder:
            seq = self.run_block(block, seq)
        return seq[:, :n_latents]

    def forward(self, input_images, input_c2w, input_fxfycxcy, target_c2w, target_fxfycxcy, target_chunk: int | None = None):
        b, n, m, h, w = self.check_views(input_images, input_c2w, input_fxfycxcy, target_c2w, target_fxfycxcy)
        latents = self.encode(input_images, input_c2w, input_fxfycxcy)
        return self.decode(latents, target_c2w, target_fxfycxcy, h, w, target_chunk)

    def decode(self, latents: torch.Tensor, target_c2w, target_fxfycxcy, height: int, width: int,
               target_chunk: int | None = None) -> torch.Tensor:
        """Render target views from the latents [b, n_latents, dim]; the cost does not depend on N."""
        b, m = target_c2w.shape[:2]
        targets = self.target_tokens(target_c2w, target_fxfycxcy, height, width).reshape(b, m, -1, self.config.dim)
        # Decoder sequences put the target tokens FIRST, then the latents.
        return self.render_target_sequences(latents, targets, self.decoder_input_norm, self.decoder, targets_first=True,
                                            chunk=target_chunk or self.target_chunk, height=height, width=width)

    def build_scene(self, input_images, input_c2w, input_fxfycxcy) -> torch.Tensor:
        return self.encode(input_images, input_c2w, input_fxfycxcy)

    def render_from_scene(self, content: torch.Tensor, target_c2w, target_fxfycxcy, height: int, width: int) -> torch.Tensor:
        return self.decode(content, target_c2w, target_fxfycxcy, height, width)

    def analytic_flops(self, n_input: int, n_target: int, batch: int = 1, image_size: int | None = None) -> F.FlopEstimate:
        c, p = self.config, self.view_tokens(image_size)
        pp = c.patch_size ** 2
        sequences = batch * n_target
        return (F.linear(batch * n_input * p, INPUT_CHANNELS * pp, c.dim)
                + F.self_attention_block(batch, c.n_latents + n_input * p, c.dim, c.mlp_ratio).scaled(c.encoder_depth)
                + F.linear(sequences * p, TARGET_CHANNELS * pp, c.dim)
                + F.self_attention_block(sequences, p + c.n_latents, c.dim, c.mlp_ratio).scaled(c.decoder_depth)
                + F.linear(sequences * p, c.dim, RGB_CHANNELS * pp))
