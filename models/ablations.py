"""Ablation arms: each isolates one design choice that separates Efficient-LVSM from LVSM,
as a small subclass or composition of the released variants and the shared layers.

- `efficient_lvsm_shared_weights`: the input stream reuses the target stream's block weights (the
  "rigid parameter sharing among heterogeneous tokens" the Efficient-LVSM paper argues against).
- `efficient_lvsm_global_input`: the input stream attends across all input views jointly instead of
  within each view (so there is no exact KV cache, and none is offered).
- `mmdit_joint`: MM-DiT blocks (Stable Diffusion 3): separate weights per stream, one joint attention
  over [all input tokens ; one target's tokens], one sequence per target view as in LVSM decoder-only.
- `lvsm_masked`: LVSM decoder-only with an attention mask that gives exactly the dual stream's
  connectivity (decoupled connectivity with shared weights).

`efficient_lvsm_final_context` (co-refinement vs the final input states) lives beside
Efficient-LVSM; a 12-layer LVSM is `lvsm_decoder_only` with `depth` overridden, not a class.
"""
from __future__ import annotations

import functools
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as TF

from . import flops as F
from .base import NVSModel
from .config import VariantConfig
from .efficient_lvsm import EFFICIENT_LVSM_PAPER, EFFICIENT_LVSM_PRESETS, EfficientLVSM, EfficientLVSMConfig
from .layers import (HeadRMSNorm, SelfAttentionBlock, SelfCrossBlock, init_depth_scaled, init_weights, layer_norm,
                     merge_heads)
from .lvsm_decoder_only import LVSM_PAPER, LVSMDecoderOnly
from .registry import ModelCard, register
from .tokens import INPUT_CHANNELS, RGB_CHANNELS, TARGET_CHANNELS, RenderHead

MMDIT_PAPER = 'Esser et al., "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis" (MM-DiT), ICML 2024'


# ------------------------------------------------------------------------------------ helpers


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """SDPA on token-major [B, S, H, hd] tensors -> [B, S, H*hd]; `mask` [S, S] boolean, True = may attend."""
    return merge_heads(TF.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask))


# ------------------------------------------------------------- Efficient-LVSM, shared weights


def shared_input_block(block: SelfCrossBlock, x: torch.Tensor) -> torch.Tensor:
    """Input-stream block l run on target block l's self-attention, MLP and norms: x += attn(LN(x)); x += mlp(LN(x))."""
    x = x + block.self_attn(block.self_norm(x))
    return x + block.mlp(block.mlp_norm(x))


@register("efficient_lvsm_shared_weights", card=ModelCard(
    label="Efficient-LVSM (shared weights)", color="tab:purple", paper=EFFICIENT_LVSM_PAPER,
    ablation_of="efficient_lvsm"))
class EfficientLVSMSharedWeights(EfficientLVSM):
    """Both streams run on one set of block weights: input block l is target block l's self-attention,
    MLP and (parameter-free) norms; the cross-attention and its norms stay target-only. Equal to
    Efficient-LVSM whose input block l holds target block l's self-attention and MLP weights. The
    connectivity (intra-view inputs, per-layer cross-attention) and the cost are Efficient-LVSM's, so
    the KV cache stays exact; only the parameter count drops (by the input blocks)."""
    capabilities = frozenset({"incremental_views", "analytic_flops"})
    camera_encodings = ("plucker",)
    depth_fields = {"stream_depth": "target_blocks"}

    def __init__(self, config: VariantConfig):
        super().__init__(config)
        del self.input_blocks

    def context_states(self, tokens: torch.Tensor) -> Iterator[torch.Tensor]:
        for block in self.target_blocks:
            tokens = self.run_block(shared_input_block, block, tokens)
            yield tokens


# ------------------------------------------------------------ Efficient-LVSM, global inputs


@register("efficient_lvsm_global_input", card=ModelCard(
    label="Efficient-LVSM (global input attention)", color="tab:olive", paper=EFFICIENT_LVSM_PAPER,
    ablation_of="efficient_lvsm"))
class EfficientLVSMGlobalInput(EfficientLVSM):
    """The input stream attends across all input views of a scene jointly (one sequence of n*P tokens
    per batch element) instead of within each view; the target stream is Efficient-LVSM's. Adding a
    view changes every earlier view's states, so there is no exact KV cache: `incremental` is not
    offered; a scene state of all N views encoded together still is (`encode_scene`). Input-stream
    attention costs O(n^2 P^2 d) instead of O(n P^2 d)."""
    scene_state = "per-layer keys and values of the input stream, all views encoded jointly (adding a view rebuilds it)"
    capabilities = frozenset({"analytic_flops"})
    camera_encodings = ("plucker",)
    not_offered = {"incremental_views": "input views attend to each other, so adding a view changes the cached states of the others"}

    def input_tokens(self, input_images, input_c2w, input_fxfycxcy) -> torch.Tensor:
        """[b, n*P, d]: one sequence per scene; the target blocks read it as they read [b*n, P, d]."""
        tokens = super().input_tokens(input_images, input_c2w, input_fxfycxcy)
        return tokens.reshape(input_images.shape[0], -1, tokens.shape[-1])

    def input_stream_flops(self, n_input: int, batch: int = 1, image_size: int | None = None) -> F.FlopEstimate:
        c, p = self.config, self.view_tokens(image_size)
        tokens = batch * n_input * p
        return (F.linear(tokens, INPUT_CHANNELS * c.patch_size ** 2, c.dim)
                + (F.self_attention_block(batch, n_input * p, c.dim, c.mlp_ratio)
                   + F.linear(tokens, c.dim, 2 * c.dim)).scaled(c.stream_depth))


# ---------------------------------------------------------------------------- MM-DiT joint


class KeyValueStream(nn.Module):
    """The input stream of the last MM-DiT block: only its keys and values are read (what SD3 calls
    `context_pre_only`), so it holds a pre-norm, a k/v projection and the key norm, no dead weights."""

    def __init__(self, dim: int, head_dim: int, qk_norm: bool, norm_affine: bool):
        super().__init__()
        self.head_dim = head_dim
        self.attn_norm = layer_norm(dim, norm_affine)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.k_norm = HeadRMSNorm(head_dim) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised keys and values of x [B, S, dim], each [B, S, H, hd]."""
        b, s, _ = x.shape
        kv = self.kv(self.attn_norm(x)).view(b, s, 2, -1, self.head_dim)
        return self.k_norm(kv[:, :, 0]), kv[:, :, 1]


def _finish(stream: SelfAttentionBlock, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    """The rest of a pre-norm block after its attention: output projection, residual, MLP."""
    x = x + stream.attn.proj(attended)
    return x + stream.mlp(stream.mlp_norm(x))


class JointBlock(nn.Module):
    """MM-DiT block without timestep modulation: each stream has its own pre-norms, fused qkv with
    QK-norm, output projection and MLP (a `SelfAttentionBlock` per stream); one attention runs over
    the concatenation of both streams' tokens, so every token attends to every token. In the `last`
    block nothing reads the input tokens' outputs, so the input stream only supplies keys and values
    (`KeyValueStream`) and only the target tokens query."""

    def __init__(self, dim: int, head_dim: int, mlp_ratio: int, qk_norm: bool, norm_affine: bool, last: bool = False):
        super().__init__()
        self.last = last
        self.input_stream = (KeyValueStream(dim, head_dim, qk_norm, norm_affine) if last
                             else SelfAttentionBlock(dim, head_dim, mlp_ratio, qk_norm, norm_affine))
        self.target_stream = SelfAttentionBlock(dim, head_dim, mlp_ratio, qk_norm, norm_affine)

    def forward(self, x: torch.Tensor, split: int) -> torch.Tensor:
        """x: [B, S, dim], input-stream tokens first (x[:, :split]), then the target stream's."""
        inputs, targets = x[:, :split], x[:, split:]
        target = self.target_stream
        q_t, k_t, v_t = target.attn.queries_keys_values(target.attn_norm(targets))
        if self.last:
            k_i, v_i = self.input_stream(inputs)
            attended = attend(q_t, torch.cat([k_i, k_t], dim=1), torch.cat([v_i, v_t], dim=1))
            return torch.cat([inputs, _finish(target, targets, attended)], dim=1)
        source = self.input_stream
        q_i, k_i, v_i = source.attn.queries_keys_values(source.attn_norm(inputs))
        attended = attend(torch.cat([q_i, q_t], dim=1), torch.cat([k_i, k_t], dim=1), torch.cat([v_i, v_t], dim=1))
        return torch.cat([_finish(source, inputs, attended[:, :split]), _finish(target, targets, attended[:, split:])], dim=1)


@register("mmdit_joint", config=EfficientLVSMConfig, presets=EFFICIENT_LVSM_PRESETS, card=ModelCard(
    label="MM-DiT joint attention", color="tab:brown", paper=MMDIT_PAPER,
    ablation_of="efficient_lvsm"))
class MMDiTJoint(NVSModel):
    """Separate weights per stream (as Efficient-LVSM), joint attention (as LVSM): `stream_depth`
    MM-DiT blocks. Each target view gets one sequence [all input tokens ; its tokens], like LVSM
    decoder-only, so the input tokens are refined per target sequence (they attend to the target) and
    nothing can be cached. The last block's input stream only supplies keys and values. Parameter-free
    LayerNorms and no input LayerNorm, as in Efficient-LVSM; every linear starts at N(0, 0.02),
    depth-scaled per block with `depth_init`."""
    capabilities = frozenset({"analytic_flops"})
    depth_fields = {"stream_depth": "blocks"}
    target_states = ("blocks", "last")  # sequences [all input tokens ; one target's tokens]

    def __init__(self, config: EfficientLVSMConfig, target_chunk: int | None = None):
        super().__init__(config)
        c = config
        self.blocks = nn.ModuleList(
            JointBlock(c.dim, c.head_dim, c.mlp_ratio, c.qk_norm, norm_affine=False, last=index == c.stream_depth - 1)
            for index in range(c.stream_depth)
        )
        self.head = RenderHead(c.dim, c.patch_size, norm_affine=False)
        self.target_chunk = target_chunk
        init_weights(self)
        if c.depth_init:
            init_depth_scaled(self.blocks)

    def forward(self, input_images, input_c2w, input_fxfycxcy, target_c2w, target_fxfycxcy, target_chunk: int | None = None):
        inputs, targets, h, w = self.sequence_tokens(input_images, input_c2w, input_fxfycxcy, target_c2w, target_fxfycxcy)
        blocks = [functools.partial(block, split=inputs.shape[1]) for block in self.blocks]
        return self.render_target_sequences(inputs, targets, nn.Identity(), blocks, targets_first=False,
                                            chunk=target_chunk or self.target_chunk, height=h, width=w)

    def analytic_flops(self, n_input: int, n_target: int, batch: int = 1, image_size: int | None = None) -> F.FlopEstimate:
        """Per-stream projections add up to one projection of the whole sequence, so every block but
        the last costs an LVSM decoder-only block; in the last, the inputs are only projected to keys
        and values, and only the target tokens query."""
        c, p = self.config, self.view_tokens(image_size)
        pp = c.patch_size ** 2
        sequences = batch * n_target
        length = (n_input + 1) * p
        last = (F.linear(sequences * n_input * p, c.dim, 2 * c.dim)
                + F.linear(sequences * p, c.dim, 3 * c.dim) + F.attention(p, length, c.dim).scaled(sequences)
                + F.linear(sequences * p, c.dim, c.dim) + F.mlp(sequences * p, c.dim, c.mlp_ratio))
        return (F.linear(batch * n_input * p, INPUT_CHANNELS * pp, c.dim)
                + F.linear(sequences * p, TARGET_CHANNELS * pp, c.dim)
                + F.self_attention_block(sequences, length, c.dim, c.mlp_ratio).scaled(c.stream_depth - 1) + last
                + F.linear(sequences * p, c.dim, RGB_CHANNELS * pp))


# ------------------------------------------------------------------- LVSM with a dual-stream mask


def dual_stream_mask(n_views: int, tokens_per_view: int, device: torch.device | str) -> torch.Tensor:
    """[S, S] boolean (True = may attend) for a sequence [view 0 ; ... ; view n-1 ; target], each
    `tokens_per_view` tokens: an input token sees only its own view's tokens; a target token sees
    every token. S = (n + 1) P, so the mask holds S^2 bytes (1 GiB at N=31, P=1024)."""
    view = torch.arange(n_views + 1, device=device).repeat_interleave(tokens_per_view)
    return (view[:, None] == view[None, :]) | (view[:, None] == n_views)


class MaskedSelfAttentionBlock(SelfAttentionBlock):
    """`SelfAttentionBlock` (same parameters) whose attention takes a boolean mask."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn.proj(attend(*self.attn.queries_keys_values(self.attn_norm(x)), mask))
        return x + self.mlp(self.mlp_norm(x))


@register("lvsm_masked", card=ModelCard(
    label="LVSM decoder-only (dual-stream mask)", color="tab:pink", paper=LVSM_PAPER,
    ablation_of="lvsm_decoder_only"))
class LVSMMasked(LVSMDecoderOnly):
    """LVSM decoder-only (same weights, names and initialisation) whose attention is masked to the
    dual stream's connectivity: input tokens attend only within their own view, target tokens attend
    to themselves and all input tokens. One set of weights for both kinds of token, Efficient-LVSM's
    connectivity: it separates decoupled weights from decoupled connectivity. The masked-out scores
    are still computed, so FLOPs and latency are decoder-only's at the same depth. The connectivity
    also gives it a scene state (per-layer keys and values of the input tokens) that decoder-only
    cannot have."""
    scene_state = "per-layer keys and values of the input tokens (each attends only within its view)"
    capabilities = frozenset({"analytic_flops"})
    camera_encodings = ("plucker",)

    def __init__(self, config: VariantConfig, target_chunk: int | None = None):
        super().__init__(config, target_chunk)
        # Same parameters in the masked block class; assigned, not copied (no new draws from the RNG).
        with torch.device("meta"):
            blocks = nn.ModuleList(
                MaskedSelfAttentionBlock(config.dim, config.head_dim, config.mlp_ratio, config.qk_norm, norm_affine=True)
                for _ in range(config.depth)
            )
        blocks.load_state_dict(self.blocks.state_dict(), assign=True)
        self.blocks = blocks

    def build_scene(self, input_images, input_c2w, input_fxfycxcy) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Input tokens see only their own view, never a target, so they are the same in every target
        sequence: each view runs through the blocks once, in its own sequence (what the mask allows),
        and each layer keeps the keys and values the target tokens read, [b, n*P, H, hd] each."""
        b, n = input_images.shape[:2]
        self.count_encoded_views(n)
        x = self.input_norm(self.input_tokens(input_images, input_c2w, input_fxfycxcy))  # [b*n, P, d]
        cache = []
        for block in self.blocks:
            q, k, v = block.attn.queries_keys_values(block.attn_norm(x))
            cache.append((k.reshape(b, -1, *k.shape[2:]), v.reshape(b, -1, *v.shape[2:])))
            x = _finish(block, x, attend(q, k, v))
        return cache

    def render_from_scene(self, content, target_c2w, target_fxfycxcy, height: int, width: int) -> torch.Tensor:
        """Each target view's tokens attend to [cached input keys ; their own keys] per layer: the cost
        is linear in the N*P cached keys (the forward pass also runs the N views' tokens each time)."""
        b, m = target_c2w.shape[:2]
        tokens = self.input_norm(self.target_tokens(target_c2w, target_fxfycxcy, height, width)).reshape(b, m, -1, self.config.dim)
        chunk = self.target_chunk or m
        renders = []
        for start in range(0, m, chunk):
            x = tokens[:, start:start + chunk]
            views = x.shape[1]
            x = x.reshape(b * views, -1, self.config.dim)
            for block, (keys, values) in zip(self.blocks, content):
                q, k, v = block.attn.queries_keys_values(block.attn_norm(x))
                keys, values = (t.repeat_interleave(views, dim=0) for t in (keys, values))
                x = _finish(block, x, attend(q, torch.cat([keys, k], dim=1), torch.cat([values, v], dim=1)))
            renders.append(self.head(x, height, width).reshape(b, views, RGB_CHANNELS, height, width))
        return torch.cat(renders, dim=1)

    def render_target_sequences(self, shared, targets, norm, blocks, targets_first, chunk, height, width, cameras=None):
        if cameras is not None:  # camera_encodings refuses PRoPE at build: never given
            raise ValueError("lvsm_masked: cameras inside attention are not offered")
        if targets_first:
            raise ValueError("lvsm_masked: the mask is laid out for [inputs ; target] sequences")
        p = targets.shape[2]
        mask = dual_stream_mask(shared.shape[1] // p, p, shared.device)
        masked = [functools.partial(block, mask=mask) for block in blocks]
        return super().render_target_sequences(shared, targets, norm, masked, targets_first, chunk, height, width)
