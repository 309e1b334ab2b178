"""Cameras inside attention: PRoPE, projective relative positional encoding (Li et al., "Cameras as
Relative Positional Encoding", NeurIPS 2025), and GTA, its special case without intrinsics.

Each token's head features are split in three blocks: the first half is transformed by its view's 4x4
projective matrix P (feature groups of four), the next quarter by 1D RoPE on the token's patch column,
the last quarter by 1D RoPE on its patch row. Queries take Pᵀ, keys and values P⁻¹, and the attention
output P again (RoPE alike, inverted on the output), so attention logits depend only on the relative
transforms P_i P_j⁻¹ between views, and within one view reduce to 2D RoPE. Moving every camera (and the
scene) by one rigid transform changes nothing.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

ROPE_BASE = 100.0


def _lift(matrix: torch.Tensor) -> torch.Tensor:
    """[..., 3, 3] -> [..., 4, 4] with the 3x3 top-left and 1 at the bottom right."""
    out = torch.zeros(*matrix.shape[:-2], 4, 4, dtype=matrix.dtype, device=matrix.device)
    out[..., :3, :3] = matrix
    out[..., 3, 3] = 1
    return out


def normalized_intrinsics(Ks: torch.Tensor, image_width: int, image_height: int) -> torch.Tensor:
    """Pixel intrinsics [..., 3, 3] -> fx/W, fy/H, cx/W - 0.5, cy/H - 0.5 (the image spans [-0.5, 0.5])."""
    scale = torch.tensor([image_width, image_height, 1.0], dtype=Ks.dtype, device=Ks.device)
    normalized = Ks / scale[:, None]
    normalized[..., 0, 2] -= 0.5
    normalized[..., 1, 2] -= 0.5
    return normalized


def projection(viewmats: torch.Tensor, Ks: torch.Tensor | None, image_width: int, image_height: int) -> torch.Tensor:
    """P = lift(K_norm) @ viewmat [b, cameras, 4, 4] (image <- world); GTA (`Ks` None): the viewmat alone."""
    if Ks is None:
        return viewmats
    return _lift(normalized_intrinsics(Ks, image_width, image_height)) @ viewmats


def _rope_angles(positions: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [tokens, width / 2] of 1D RoPE on `positions` over a block of `width` features,
    frequencies ROPE_BASE^(-i / (width / 2))."""
    pairs = width // 2
    frequencies = ROPE_BASE ** (-torch.arange(pairs, dtype=torch.float32, device=positions.device) / pairs)
    angles = positions.float()[:, None] * frequencies[None, :]
    return angles.cos(), angles.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """RoPE in split ordering: the block's first half rotated against its second half, by minus the angle
    as the release turns it (the logits depend on relative positions either way; the fixture fixes which)."""
    first, second = x.chunk(2, dim=-1)
    sin = sin if inverse else -sin
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


class CameraTransforms:
    """What PRoPE / GTA applies to the tokens of a set of views: per token its view's P (or P⁻¹ as the
    role asks) and its patch's RoPE angles. Built once per set of views and reused by every layer;
    `regrouped` lays the same matrices out as other sequences (one view per row, the views of a batch
    element together, input views repeated per target sequence) without computing them again."""

    def __init__(self, P: torch.Tensor, P_inverse: torch.Tensor, patches_x: int, patches_y: int, head_dim: int):
        """P, P_inverse [sequences, cameras, 4, 4]: each sequence's views, in token order."""
        if head_dim % 8:
            raise ValueError(f"PRoPE: head_dim must be divisible by 8 (half projective, two RoPE quarters), got {head_dim}")
        self.head_dim, self.per_view, self.grid = head_dim, patches_x * patches_y, (patches_x, patches_y)
        self.P, self.P_inverse = P, P_inverse
        columns = torch.arange(patches_x, device=P.device).repeat(patches_y)
        rows = torch.arange(patches_y, device=P.device).repeat_interleave(patches_x)
        quarter = head_dim // 4
        self.rope_x = _rope_angles(columns, quarter)
        self.rope_y = _rope_angles(rows, quarter)

    @classmethod
    def of_views(cls, viewmats: torch.Tensor, Ks: torch.Tensor | None, patches_x: int, patches_y: int,
                 image_width: int, image_height: int, head_dim: int) -> "CameraTransforms":
        """From world-to-camera matrices [sequences, cameras, 4, 4] and pixel intrinsics (None: GTA)."""
        P = projection(viewmats, Ks, image_width, image_height)
        return cls(P, torch.linalg.inv(P), patches_x, patches_y, head_dim)

    def regrouped(self, arrange: Callable[[torch.Tensor], torch.Tensor]) -> "CameraTransforms":
        """The same views' transforms, laid out by `arrange` ([s, c, 4, 4] -> [s', c', 4, 4])."""
        return CameraTransforms(arrange(self.P), arrange(self.P_inverse), *self.grid, self.head_dim)

    def _per_token(self, matrices: torch.Tensor, tokens: int) -> torch.Tensor:
        """[b, cameras, 4, 4] -> [b, 1, tokens, 4, 4], each view's matrix repeated over its tokens."""
        cameras = tokens // self.per_view
        return matrices[:, :cameras].repeat_interleave(self.per_view, dim=1)[:, None]

    def apply(self, x: torch.Tensor, matrices: torch.Tensor, inverse_rope: bool = False) -> torch.Tensor:
        """x [b, heads, tokens, head_dim]: the projective half by `matrices` (per token's view, applied to
        each group of four features), the RoPE quarters forward (or inverted)."""
        half, quarter = self.head_dim // 2, self.head_dim // 4
        b, heads, tokens, _ = x.shape
        groups = x[..., :half].reshape(b, heads, tokens, half // 4, 4)
        projective = torch.einsum("bhtij,bhtgj->bhtgi", self._per_token(matrices, tokens).to(x.dtype), groups)
        views = tokens // self.per_view
        cos_x, sin_x = (a.repeat(views, 1) for a in self.rope_x)
        cos_y, sin_y = (a.repeat(views, 1) for a in self.rope_y)
        along_x = _rotate(x[..., half:half + quarter], cos_x.to(x.dtype), sin_x.to(x.dtype), inverse_rope)
        along_y = _rotate(x[..., half + quarter:], cos_y.to(x.dtype), sin_y.to(x.dtype), inverse_rope)
        return torch.cat([projective.reshape(b, heads, tokens, half), along_x, along_y], dim=-1)

    def queries(self, q: torch.Tensor) -> torch.Tensor:
        return self.apply(q, self.P.transpose(-1, -2))

    def keys_values(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x, self.P_inverse)

    def outputs(self, o: torch.Tensor) -> torch.Tensor:
        return self.apply(o, self.P, inverse_rope=True)


class WithLatents:
    """PRoPE / GTA over sequences that hold `latents` tokens without a camera beside views' tokens (the
    encoder-decoder's [latents ; input views] and [target ; latents]). A latent takes the transform of one
    view, the anchor (the scene's first input view), and no RoPE. Logits between views stay relative, and a
    latent sees every view relative to the anchor: moving every camera (and the scene) by one rigid
    transform changes nothing, but which input view comes first does."""

    def __init__(self, views: CameraTransforms, anchor_P: torch.Tensor, anchor_P_inverse: torch.Tensor, latents: int,
                 latents_first: bool):
        """anchor_P, anchor_P_inverse [sequences, 4, 4]."""
        self.views, self.latents, self.latents_first = views, latents, latents_first
        self.anchor_P, self.anchor_P_inverse = anchor_P, anchor_P_inverse

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(latent tokens, view tokens) of x [b, heads, tokens, head_dim]."""
        if self.latents_first:
            return x[:, :, :self.latents], x[:, :, self.latents:]
        return x[:, :, -self.latents:], x[:, :, :-self.latents]

    def _join(self, latent: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        return torch.cat([latent, views] if self.latents_first else [views, latent], dim=2)

    def _anchored(self, x: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
        """The projective half of every latent token by its sequence's anchor matrix; the RoPE quarters as they are."""
        half = self.views.head_dim // 2
        b, heads, tokens, _ = x.shape
        groups = x[..., :half].reshape(b, heads, tokens, half // 4, 4)
        projective = torch.einsum("bij,bhtgj->bhtgi", matrices.to(x.dtype), groups)
        return torch.cat([projective.reshape(b, heads, tokens, half), x[..., half:]], dim=-1)

    def queries(self, q: torch.Tensor) -> torch.Tensor:
        latent, views = self._split(q)
        return self._join(self._anchored(latent, self.anchor_P.transpose(-1, -2)), self.views.queries(views))

    def keys_values(self, x: torch.Tensor) -> torch.Tensor:
        latent, views = self._split(x)
        return self._join(self._anchored(latent, self.anchor_P_inverse), self.views.keys_values(views))

    def outputs(self, o: torch.Tensor) -> torch.Tensor:
        latent, views = self._split(o)
        return self._join(self._anchored(latent, self.anchor_P), self.views.outputs(views))


def uses_prope(camera_encoding: str) -> bool:
    """Whether cameras enter attention (PRoPE or GTA)."""
    return camera_encoding in ("prope", "gta", "plucker+prope")


def view_cameras(c2w: torch.Tensor, fxfycxcy: torch.Tensor, camera_encoding: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """World-to-camera matrices [..., 4, 4] and pixel intrinsics [..., 3, 3] (None for GTA) of views given
    as OpenCV c2w and fx, fy, cx, cy."""
    viewmats = torch.linalg.inv(c2w.float())
    if camera_encoding == "gta":
        return viewmats, None
    fx, fy, cx, cy = fxfycxcy.float().unbind(-1)
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    Ks = torch.stack([fx, zero, cx, zero, fy, cy, zero, zero, one], dim=-1).reshape(*fx.shape, 3, 3)
    return viewmats, Ks


def transform_macs(tokens: int, dim: int) -> int:
    """Multiply-adds of PRoPE's projective blocks in one attention: queries, keys, values and output,
    each a 4x4 product on every group of four of half the features (RoPE is elementwise)."""
    return 4 * tokens * (dim // 2) * 4


def prope_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, viewmats: torch.Tensor, Ks: torch.Tensor | None,
                    patches_x: int, patches_y: int, image_width: int, image_height: int) -> torch.Tensor:
    """Self-attention over [b, heads, cameras * patches_y * patches_x, head_dim] tokens (camera-major, then
    row, then column), with each view's world-to-camera `viewmats` [b, cameras, 4, 4] and pixel intrinsics
    `Ks` [b, cameras, 3, 3] (None: GTA) inside attention."""
    cameras = CameraTransforms.of_views(viewmats, Ks, patches_x, patches_y, image_width, image_height, q.shape[-1])
    out = F.scaled_dot_product_attention(cameras.queries(q), cameras.keys_values(k), cameras.keys_values(v))
    return cameras.outputs(out)
