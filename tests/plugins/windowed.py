"""A variant written outside the `models` package, loaded with `--plugin`: what adding a variant costs.

Windowed LVSM encodes the input views in windows of `window` consecutive views (full self-attention
within a window, none across), keeps the encoded tokens as its scene state, and renders each target view
in its own sequence [encoded input tokens ; target tokens], as LVSM decoder-only does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models import SHARED_SIZES, ModelCard, NVSModel, VariantConfig, register
from models import flops as F
from models.layers import SelfAttentionBlock, init_weights, layer_norm
from models.tokens import INPUT_CHANNELS, RGB_CHANNELS, TARGET_CHANNELS, RenderHead


@dataclass(frozen=True)
class WindowedConfig(VariantConfig):
    depth: int = 24  # encoder blocks, and as many renderer blocks
    window: int = 2  # input views that attend to each other (a field no other variant has)


@register("windowed", card=ModelCard(label="Windowed LVSM", color="#8c564b"), config=WindowedConfig, presets={
    "paper": WindowedConfig(),
    "small": WindowedConfig(**SHARED_SIZES["small"], depth=3),
    "tiny": WindowedConfig(**SHARED_SIZES["tiny"], depth=1),
})
class Windowed(NVSModel):
    scene_state = "input tokens after the windowed encoder"
    capabilities = frozenset({"analytic_flops"})

    def __init__(self, config: WindowedConfig):
        super().__init__(config)
        c = config
        self.encoder = nn.ModuleList(SelfAttentionBlock(c.dim, c.head_dim, c.mlp_ratio, c.qk_norm, norm_affine=True)
                                     for _ in range(c.depth))
        self.input_norm = layer_norm(c.dim, affine=True)
        self.blocks = nn.ModuleList(SelfAttentionBlock(c.dim, c.head_dim, c.mlp_ratio, c.qk_norm, norm_affine=True)
                                     for _ in range(c.depth))
        self.head = RenderHead(c.dim, c.patch_size, norm_affine=True)
        init_weights(self)

    def build_scene(self, input_images, input_c2w, input_fxfycxcy) -> torch.Tensor:
        b, n = input_images.shape[:2]
        self.count_encoded_views(n)
        tokens = self.input_tokens(input_images, input_c2w, input_fxfycxcy).reshape(b, n, -1, self.config.dim)
        encoded = []
        for start in range(0, n, self.config.window):
            x = tokens[:, start:start + self.config.window].flatten(1, 2)
            for block in self.encoder:
                x = self.run_block(block, x)
            encoded.append(x)
        return torch.cat(encoded, dim=1)

    def render_from_scene(self, content, target_c2w, target_fxfycxcy, height, width):
        b, m = target_c2w.shape[:2]
        targets = self.target_tokens(target_c2w, target_fxfycxcy, height, width).reshape(b, m, -1, self.config.dim)
        return self.render_target_sequences(content, targets, self.input_norm, self.blocks, targets_first=False, chunk=None,
                                            height=height, width=width)

    def forward(self, input_images, input_c2w, input_fxfycxcy, target_c2w, target_fxfycxcy):
        b, n, m, h, w = self.check_views(input_images, input_c2w, input_fxfycxcy, target_c2w, target_fxfycxcy)
        return self.render_from_scene(self.build_scene(input_images, input_c2w, input_fxfycxcy), target_c2w, target_fxfycxcy, h, w)

    def analytic_flops(self, n_input, n_target, batch=1, image_size=None):
        c, p = self.config, self.view_tokens(image_size)
        pp, sequences = c.patch_size ** 2, batch * n_target
        windows = [min(c.window, n_input - start) for start in range(0, n_input, c.window)]
        encoder = sum((F.self_attention_block(batch, w * p, c.dim, c.mlp_ratio) for w in windows[1:]),
                      F.self_attention_block(batch, windows[0] * p, c.dim, c.mlp_ratio))
        return (F.linear(batch * n_input * p, INPUT_CHANNELS * pp, c.dim) + encoder.scaled(c.depth)
                + F.linear(sequences * p, TARGET_CHANNELS * pp, c.dim)
                + F.self_attention_block(sequences, (n_input + 1) * p, c.dim, c.mlp_ratio).scaled(c.depth)
                + F.linear(sequences * p, c.dim, RGB_CHANNELS * pp))
