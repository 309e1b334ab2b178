"""Transformer parts shared by all variants: QK-normed attention on torch SDPA, the MLP, the
pre-norm self-attention block and Efficient-LVSM's self-then-cross block."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def head_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, contiguous: bool = False) -> torch.Tensor:
    """RMSNorm over the last dimension of `x` [..., hd] (any strides), in float32: x * rsqrt(mean(x^2)
    + eps) * weight, with `weight` broadcasting against x. Returns a new tensor of x's shape in
    float32, dense in x's dimension order, or, with `contiguous` and without autograd, contiguous in
    x's shape (the same one write, to another layout).

    F.rms_norm would first copy a strided view to contiguous memory and then make four passes over
    it (square, mean, scale, weight); here one reduction reads the view where it lies, and the two
    multiplications write the result once. The norm is accumulated in float32 or wider, also when
    x is bf16 under autocast, where the mean of squares would lose too many bits.
    """
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)
    # eps + |x|^2 / hd as one op: every op over all tokens costs a thread-pool round trip.
    inv_rms = torch.addcmul(norm.new_full((), eps), norm, norm, value=1.0 / x.shape[-1]).rsqrt_()
    if contiguous and not torch.is_grad_enabled():  # out= has no autograd; training keeps x's layout
        out = torch.mul(x, inv_rms, out=torch.empty(x.shape, dtype=torch.float32, device=x.device))
    else:
        out = x * inv_rms
    return out.mul_(weight.float())


class HeadRMSNorm(nn.Module):
    """RMSNorm over the head dimension with a learnable weight shared across heads (eps 1e-5)."""

    def __init__(self, head_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(head_dim))

    def forward(self, x: torch.Tensor, contiguous: bool = False) -> torch.Tensor:
        return head_rms_norm(x, self.weight, self.eps, contiguous).to(x.dtype)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, H, S, hd] -> [B, S, H*hd]. A view, no copy, when x is a transposed [B, S, H, hd] tensor,
    which is what SDPA returns for queries laid out that way (see `Attention`)."""
    b, h, s, hd = x.shape
    return x.transpose(1, 2).reshape(b, s, h * hd)


class Attention(nn.Module):
    """Multi-head attention with QK-norm.

    Self-attention uses the fused `qkv` projection. Cross-attention (`cross=True`) projects queries
    with `q` and keys/values with `kv`, and exposes `keys_values` so that Efficient-LVSM can cache
    the normalized keys and the values of its input views.

    Heads are normalized in the projection's own [B, S, (q|k|v), H, hd] layout and only then viewed
    as [B, H, S, hd]: SDPA reads strided inputs and returns its output in the queries' layout, so
    queries kept token-major make `merge_heads` a view, and no head split or merge copies anything.
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

    def _heads(self, x: torch.Tensor, parts: int) -> torch.Tensor:
        """[B, S, parts*dim] -> [B, S, parts, H, hd], a view."""
        b, s, _ = x.shape
        return x.view(b, s, parts, -1, self.head_dim)

    def _keys(self, k: torch.Tensor) -> torch.Tensor:
        """Normalized keys [B, H, S, hd] of a [B, S, H, hd] view, written head-major: the CPU attention
        kernel reads contiguous keys a few percent faster, and the norm writes them anyway."""
        k = k.transpose(1, 2)
        return self.k_norm(k, contiguous=True) if isinstance(self.k_norm, HeadRMSNorm) else k

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized keys and values of `context` [B, S, dim], each [B, H, S, hd]."""
        kv = self._heads(self.kv(context), 2)
        return self._keys(kv[:, :, 0]), kv[:, :, 1].transpose(1, 2)

    def _normed_queries_keys(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q and k of a [B, S, 3, H, hd] projection, normalized, each [B, S, H, hd]."""
        if not isinstance(self.q_norm, HeadRMSNorm):
            return qkv[:, :, 0], qkv[:, :, 1]
        if self.q_norm.eps != self.k_norm.eps:
            return self.q_norm(qkv[:, :, 0]), self.k_norm(qkv[:, :, 1])
        # Both norms in one pass over q and k: the same formula, with each one's weight.
        weight = torch.stack([self.q_norm.weight, self.k_norm.weight]).unsqueeze(1)  # [2, 1, hd]
        qk = head_rms_norm(qkv[:, :, :2], weight, self.q_norm.eps).to(qkv.dtype)
        return qk[:, :, 0], qk[:, :, 1]

    def queries_keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self-attention's normalized queries and keys and its values of x [B, S, dim], each token-major
        [B, S, H, hd], for blocks that attend over the projections of several streams at once (joint or
        masked attention); `proj` then maps the merged heads back to dim."""
        qkv = self._heads(self.qkv(x), 3)
        q, k = self._normed_queries_keys(qkv)
        return q, k, qkv[:, :, 2]

    def forward(self, x: torch.Tensor, keys: torch.Tensor | None = None, values: torch.Tensor | None = None,
                cameras=None) -> torch.Tensor:
        """`cameras`: models.prope.CameraTransforms of the tokens' views, for PRoPE / GTA."""
        if self.cross:  # `cameras`: the query views' (keys and values come transformed by their own views')
            q = self.q_norm(self._heads(self.q(x), 1)[:, :, 0]).transpose(1, 2)
            k, v = keys, values
            if cameras is not None:
                return self.proj(merge_heads(cameras.outputs(F.scaled_dot_product_attention(cameras.queries(q), k, v))))
        else:
            qkv = self._heads(self.qkv(x), 3)
            q, k, v = self.q_norm(qkv[:, :, 0]).transpose(1, 2), self._keys(qkv[:, :, 1]), qkv[:, :, 2].transpose(1, 2)
        if cameras is not None:
            q, k, v = cameras.queries(q), cameras.keys_values(k), cameras.keys_values(v)
            return self.proj(merge_heads(cameras.outputs(F.scaled_dot_product_attention(q, k, v))))
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: int):
        super().__init__()
        self.fc_in = nn.Linear(dim, ratio * dim, bias=False)
        self.fc_out = nn.Linear(ratio * dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc_in(x)
        # Without autograd, GELU overwrites the hidden tensor, which nothing else holds: a fresh
        # output as wide costs new pages on every call (on a CPU at 128 px, N=8, M=8 as much as
        # the GELU itself). Autograd needs GELU's input kept, so training allocates.
        hidden = F.gelu(hidden) if torch.is_grad_enabled() else torch.ops.aten.gelu_(hidden)
        return self.fc_out(hidden)


class WeightlessLayerNorm(nn.LayerNorm):
    """A LayerNorm without weight or bias (Efficient-LVSM's), run as one whose weight is all ones.

    PyTorch's CPU kernel normalizes in a scalar loop when it has no weight and in a vectorized one
    when it has: at 256 channels the weightless call takes about twice as long (23 against 10 us
    at 64 tokens, 500 against 230 us at 2304). Multiplying by one is exact, so the output is the
    same to the bit. The ones are made per call, not kept: a buffer would be left uninitialized by
    `to_empty` when a checkpoint is loaded onto a model built on the meta device. Only on the CPU:
    elsewhere making them would cost a kernel launch and save nothing."""

    def __init__(self, dim: int):
        super().__init__(dim, bias=False, elementwise_affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ones = x.new_ones(self.normalized_shape) if x.device.type == "cpu" else None
        return F.layer_norm(x, self.normalized_shape, ones, None, self.eps)


def layer_norm(dim: int, affine: bool) -> nn.LayerNorm:
    """LVSM's LayerNorms carry a weight and no bias; Efficient-LVSM's carry neither."""
    return nn.LayerNorm(dim, bias=False) if affine else WeightlessLayerNorm(dim)


class SelfAttentionBlock(nn.Module):
    """Pre-norm block: x += attn(LN(x)); x += mlp(LN(x))."""

    def __init__(self, dim: int, head_dim: int, mlp_ratio: int, qk_norm: bool, norm_affine: bool):
        super().__init__()
        self.attn_norm = layer_norm(dim, norm_affine)
        self.attn = Attention(dim, head_dim, qk_norm)
        self.mlp_norm = layer_norm(dim, norm_affine)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, cameras=None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cameras=cameras)
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

    def context_keys_values(self, context: torch.Tensor, cameras=None) -> tuple[torch.Tensor, torch.Tensor]:
        """What the KV cache stores for this layer: keys/values of input tokens [B, S, dim] (with `cameras`,
        the input views' CameraTransforms, transformed by their views for PRoPE / GTA)."""
        keys, values = self.cross_attn.keys_values(self.context_norm(context))
        return (keys, values) if cameras is None else (cameras.keys_values(keys), cameras.keys_values(values))

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, views_per_batch: int,
                view_cameras=None, query_cameras=None) -> torch.Tensor:
        """x: [B*M, P, dim] target tokens; keys/values: [B, H, N*P, hd]. With PRoPE / GTA, `view_cameras`
        holds each target view's transforms (rows of x), `query_cameras` a batch element's M views'."""
        x = x + self.self_attn(self.self_norm(x), cameras=view_cameras)
        bm, p, d = x.shape
        # Queries of all M views of one batch element share one attention call against the same
        # keys; this does not couple target views because it is cross-attention only.
        grouped = x.reshape(bm // views_per_batch, views_per_batch * p, d)
        grouped = grouped + self.cross_attn(self.query_norm(grouped), keys, values, cameras=query_cameras)
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
