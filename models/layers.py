"""Transformer parts shared by all variants: QK-normed attention on torch SDPA, the MLP, the
pre-norm self-attention block and Efficient-LVSM's self-then-cross block."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class HeadRMSNorm(nn.Module):
    """RMSNorm over the head dimension with a learnable weight shared across heads (eps 1e-5)."""

    def __init__(self, head_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalize in float32: under bf16 autocast the mean of squares loses too many bits.
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


def split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[B, S, H*hd] -> [B, H, S, hd] with the head index outer, as the official code splits."""
    b, s, _ = x.shape
    return x.view(b, s, -1, head_dim).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, s, hd = x.shape
    return x.transpose(1, 2).reshape(b, s, h * hd)


class Attention(nn.Module):
    """Multi-head attention with QK-norm.

    Self-attention uses the fused `qkv` projection. Cross-attention (`cross=True`) projects queries
    with `q` and keys/values with `kv`, and exposes `keys_values` so that Efficient-LVSM can cache
    the normalized keys and the values of its input views.
    """

    def __init__(self, dim: int, head_dim: int, qk_norm: bool = True, cross: bool = False):
        super().__init__()
        self.head_dim = head_dim
        self.cross = cross
        if cross:
            self.q = nn.Linear(dim, dim, bias=False)
            self.kv = nn.Linear(dim, 2 * dim, bias=False)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_norm = HeadRMSNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = HeadRMSNorm(head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=False)

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized keys and values of `context` [B, S, dim], each [B, H, S, hd]."""
        k, v = self.kv(context).chunk(2, dim=-1)
        return self.k_norm(split_heads(k, self.head_dim)), split_heads(v, self.head_dim)

    def forward(self, x: torch.Tensor, keys: torch.Tensor | None = None, values: torch.Tensor | None = None) -> torch.Tensor:
        if self.cross:
            q = self.q_norm(split_heads(self.q(x), self.head_dim))
            k, v = keys, values
        else:
            q, k, v = (split_heads(t, self.head_dim) for t in self.qkv(x).chunk(3, dim=-1))
            q, k = self.q_norm(q), self.k_norm(k)
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: int):
        super().__init__()
        self.fc_in = nn.Linear(dim, ratio * dim, bias=False)
        self.fc_out = nn.Linear(ratio * dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(x)))


def layer_norm(dim: int, affine: bool) -> nn.LayerNorm:
    """LVSM's LayerNorms carry a weight and no bias; Efficient-LVSM's carry neither."""
    return nn.LayerNorm(dim, bias=False, elementwise_affine=affine)


class SelfAttentionBlock(nn.Module):
    """Pre-norm block: x += attn(LN(x)); x += mlp(LN(x))."""

    def __init__(self, dim: int, head_dim: int, mlp_ratio: int, qk_norm: bool, norm_affine: bool):
        super().__init__()
        self.attn_norm = layer_norm(dim, norm_affine)
        self.attn = Attention(dim, head_dim, qk_norm)
        self.mlp_norm = layer_norm(dim, norm_affine)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class SelfCrossBlock(nn.Module):
    """Efficient-LVSM target block: self-attention within each target view, cross-attention to the
    input views' states of the same depth, then the MLP."""

    def __init__(self, dim: int, head_dim: int, mlp_ratio: int, qk_norm: bool, norm_affine: bool):
        super().__init__()
        self.self_norm = layer_norm(dim, norm_affine)
        self.self_attn = Attention(dim, head_dim, qk_norm)
        self.query_norm = layer_norm(dim, norm_affine)
        self.context_norm = layer_norm(dim, norm_affine)
        self.cross_attn = Attention(dim, head_dim, qk_norm, cross=True)
        self.mlp_norm = layer_norm(dim, norm_affine)
        self.mlp = MLP(dim, mlp_ratio)

    def context_keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the KV cache stores for this layer: keys/values of input tokens [B, S, dim]."""
        return self.cross_attn.keys_values(self.context_norm(context))

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, views_per_batch: int) -> torch.Tensor:
        """x: [B*M, P, dim] target tokens; keys/values: [B, H, N*P, hd]."""
        x = x + self.self_attn(self.self_norm(x))
        bm, p, d = x.shape
        # Queries of all M views of one batch element share one attention call against the same
        # keys; this does not couple target views because it is cross-attention only.
        grouped = x.reshape(bm // views_per_batch, views_per_batch * p, d)
        grouped = grouped + self.cross_attn(self.query_norm(grouped), keys, values)
        x = grouped.reshape(bm, p, d)
        return x + self.mlp(self.mlp_norm(x))


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std)


def init_depth_scaled(blocks: nn.ModuleList) -> None:
    """Official depth init: block l's linears get std 0.02 / sqrt(2 (l + 1))."""
    for index, block in enumerate(blocks):
        init_weights(block, std=0.02 / (2 * (index + 1)) ** 0.5)
