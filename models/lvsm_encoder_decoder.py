"""LVSM encoder-decoder: input views are compressed into learned latent tokens by an encoder; a
decoder reads them once per target view (Jin et al., ICLR 2025)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import flops as F
from .base import NVSModel
from .config import CAMERA_ENCODINGS, SHARED_SIZES, VariantConfig
from .official import OfficialCode, lvsm_official_build, lvsm_official_render, lvsm_official_yaml, lvsm_rays_bmm_flops
from .layers import SelfAttentionBlock, init_depth_scaled, init_weights, layer_norm
from .lvsm_decoder_only import LVSM_BLOCK_KEYS, LVSM_PAPER, LVSM_TABLE_1, LVSM_TOKEN_KEYS, OBJECTS_SOURCE, RE10K_SETTING, objects_setting
from .registry import ModelCard, Published, register
from .prope import WithLatents, transform_macs, uses_prope
from .tokens import RGB_CHANNELS, RenderHead, token_channels


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
    "small128": EncoderDecoderConfig(**SHARED_SIZES["small128"], encoder_depth=3, decoder_depth=3, n_latents=256),
    "tiny": EncoderDecoderConfig(**SHARED_SIZES["tiny"], encoder_depth=1, decoder_depth=1, n_latents=16),
    # Latents start at N(0, 1) instead of the official N(0, 0.02), which learns too slowly at the studies'
    # budget: 21.73 dB after 2500 steps, under the camera-ignoring bar (results/convergence/recipe_search.md).
    "study": EncoderDecoderConfig(**SHARED_SIZES["study"], encoder_depth=2, decoder_depth=2, n_latents=64, latent_init_std=1.0),
}


@register("lvsm_encoder_decoder", config=EncoderDecoderConfig, presets=ENCODER_DECODER_PRESETS, card=ModelCard(
    label="LVSM encoder-decoder", color="tab:orange", paper=LVSM_PAPER,
    code="github.com/Haian-Jin/LVSM (non-commercial licence)", official_params=173_154_816,
    published={
        "re10k": Published(LVSM_TABLE_1, {"psnr": 28.58, "ssim": 0.893, "lpips": 0.114}, RE10K_SETTING),
        "objects_abo": Published(OBJECTS_SOURCE, {"psnr": 29.81, "ssim": 0.913, "lpips": 0.065}, objects_setting("ABO")),
        "objects_gso": Published(OBJECTS_SOURCE, {"psnr": 29.32, "ssim": 0.933, "lpips": 0.052}, objects_setting("GSO")),
    }))
class LVSMEncoderDecoder(NVSModel):
    """Cameras inside attention (PRoPE / GTA): its latent tokens have no camera, and a latent given none
    would see each view's absolute pose. They are tied to the scene's first input view instead
    (models.prope.WithLatents): renders do not change when every camera moves by one rigid transform, but
    they do depend on which input view comes first (with Plücker rays alone they do not). The scene state
    carries the first view's transform beside the latents."""
    capabilities = frozenset({"official_weights", "analytic_flops"})
    camera_encodings = CAMERA_ENCODINGS
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

    def encode(self, input_images, input_c2w, input_fxfycxcy):
        """The scene as latent tokens [b, n_latents, dim]; no LayerNorm in front of the encoder. With
        cameras inside attention, also the first input view's transform and its inverse [b, 4, 4]."""
        b, n, _, h, w = input_images.shape
        self.count_encoded_views(n)
        d, n_latents = self.config.dim, self.config.n_latents
        inputs = self.input_tokens(input_images, input_c2w, input_fxfycxcy).reshape(b, -1, d)
        seq = torch.cat([self.latents.unsqueeze(0).expand(b, -1, -1).to(inputs.dtype), inputs], dim=1)
        cameras = ()
        if uses_prope(self.config.camera_encoding):
            views = self.view_transforms(input_c2w, input_fxfycxcy, h, w)
            anchor = (views.P[:, 0], views.P_inverse[:, 0])
            cameras = (WithLatents(views, *anchor, n_latents, latents_first=True),)
        for block in self.encoder:
            seq = self.run_block(block, seq, *cameras)
        return (seq[:, :n_latents], *anchor) if cameras else seq[:, :n_latents]

    def forward(self, input_images, input_c2w, input_fxfycxcy, target_c2w, target_fxfycxcy, target_chunk: int | None = None):
        b, n, m, h, w = self.check_views(input_images, input_c2w, input_fxfycxcy, target_c2w, target_fxfycxcy)
        latents = self.encode(input_images, input_c2w, input_fxfycxcy)
        return self.decode(latents, target_c2w, target_fxfycxcy, h, w, target_chunk)

    def decode(self, scene, target_c2w, target_fxfycxcy, height: int, width: int,
               target_chunk: int | None = None) -> torch.Tensor:
        """Render target views from `encode`'s scene (latents [b, n_latents, dim], with the anchor's
        transforms when cameras enter attention); the cost does not depend on N."""
        latents, *anchor = scene if isinstance(scene, tuple) else (scene,)
        b, m = target_c2w.shape[:2]
        targets = self.target_tokens(target_c2w, target_fxfycxcy, height, width).reshape(b, m, -1, self.config.dim)
        cameras = None
        if anchor:
            views = self.view_transforms(target_c2w, target_fxfycxcy, height, width)

            def cameras(start: int, chunk: int) -> WithLatents:
                """Each decoder sequence's transforms: its target view's, then the latents' anchor."""
                def per_sequence(matrices: torch.Tensor) -> torch.Tensor:
                    return matrices[:, start:start + chunk].reshape(b * chunk, 1, 4, 4)

                def anchored(matrix: torch.Tensor) -> torch.Tensor:
                    return matrix[:, None].expand(b, chunk, 4, 4).reshape(b * chunk, 4, 4)
                sequences = views.regrouped(per_sequence)
                return WithLatents(sequences, anchored(anchor[0]), anchored(anchor[1]), self.config.n_latents,
                                   latents_first=False)
        # Decoder sequences put the target tokens FIRST, then the latents.
        return self.render_target_sequences(latents, targets, self.decoder_input_norm, self.decoder, targets_first=True,
                                            chunk=target_chunk or self.target_chunk, height=height, width=width,
                                            cameras=cameras)

    def build_scene(self, input_images, input_c2w, input_fxfycxcy):
        return self.encode(input_images, input_c2w, input_fxfycxcy)

    def render_from_scene(self, content, target_c2w, target_fxfycxcy, height: int, width: int) -> torch.Tensor:
        return self.decode(content, target_c2w, target_fxfycxcy, height, width)

    def analytic_flops(self, n_input: int, n_target: int, batch: int = 1, image_size: int | None = None) -> F.FlopEstimate:
        c, p = self.config, self.view_tokens(image_size)
        pp = c.patch_size ** 2
        sequences = batch * n_target
        inputs, targets = token_channels(c.camera_encoding)
        cost = (F.linear(batch * n_input * p, inputs * pp, c.dim)
                + F.self_attention_block(batch, c.n_latents + n_input * p, c.dim, c.mlp_ratio).scaled(c.encoder_depth)
                + F.linear(sequences * p, targets * pp, c.dim)
                + F.self_attention_block(sequences, p + c.n_latents, c.dim, c.mlp_ratio).scaled(c.decoder_depth)
                + F.linear(sequences * p, c.dim, RGB_CHANNELS * pp))
        if uses_prope(c.camera_encoding):  # the transforms in every layer, and P = K @ viewmat once per view (PRoPE)
            encoder = transform_macs(batch * (c.n_latents + n_input * p), c.dim) * c.encoder_depth
            decoder = transform_macs(sequences * (p + c.n_latents), c.dim) * c.decoder_depth
            cost += F.FlopEstimate(0, encoder + decoder + (64 * batch * (n_input + n_target) if c.camera_encoding != "gta" else 0))
        return cost
