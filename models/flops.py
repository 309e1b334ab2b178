"""Analytic forward cost in multiply-accumulates (MACs); FLOPs = 2 x MACs.

Only matrix products are counted (linear layers and the two attention matmuls), which is what
`torch.utils.flop_counter.FlopCounterMode` counts; norms, softmax and GELU are left out by both.
`linear_macs` alone is what `thop` reports, since thop does not see functional attention.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FlopEstimate:
    linear_macs: int
    attention_macs: int

    @property
    def macs(self) -> int:
        return self.linear_macs + self.attention_macs

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def __add__(self, other: "FlopEstimate") -> "FlopEstimate":
        return FlopEstimate(self.linear_macs + other.linear_macs, self.attention_macs + other.attention_macs)

    def scaled(self, factor: int) -> "FlopEstimate":
        return FlopEstimate(self.linear_macs * factor, self.attention_macs * factor)


def linear(tokens: int, fan_in: int, fan_out: int) -> FlopEstimate:
    return FlopEstimate(tokens * fan_in * fan_out, 0)


def attention(queries: int, keys: int, dim: int) -> FlopEstimate:
    """QK^T and AV for one sequence: 2 * Sq * Sk * dim MACs (summed over heads)."""
    return FlopEstimate(0, 2 * queries * keys * dim)


def mlp(tokens: int, dim: int, ratio: int) -> FlopEstimate:
    return linear(tokens, dim, ratio * dim) + linear(tokens, ratio * dim, dim)


def self_attention_block(sequences: int, seq_len: int, dim: int, ratio: int) -> FlopEstimate:
    tokens = sequences * seq_len
    return (linear(tokens, dim, 3 * dim) + attention(seq_len, seq_len, dim).scaled(sequences)
            + linear(tokens, dim, dim) + mlp(tokens, dim, ratio))


# LaCT's fast-weight layer: its products are functional matmuls (thop does not see them) and they are
# what mixes information across views, so they are counted beside attention.


def fast_weight_apply(tokens: int, heads: int, width: int, hidden: int) -> FlopEstimate:
    """(silu(q w0) * (q w2)) w1 for `tokens` queries: three [width x hidden] products per token and head."""
    return FlopEstimate(0, 3 * tokens * heads * width * hidden)


def newton_schulz(rows: int, cols: int, steps: int) -> FlopEstimate:
    """Quintic Newton-Schulz on one [rows x cols] matrix, run on its wide orientation (r <= c):
    per step X X^T (r r c), A A (r^3) and B X (r r c)."""
    r, c = min(rows, cols), max(rows, cols)
    return FlopEstimate(0, steps * (2 * r * r * c + r ** 3))


def fast_weight_update(batch: int, tokens: int, heads: int, width: int, hidden: int, steps: int) -> FlopEstimate:
    """One fast-weight step on `tokens` key/value pairs per batch element, per head of `width`: k w0, k w2
    and v w1^T, the three gradients (each a [width x tokens] by [tokens x hidden] product), and
    Newton-Schulz on each [width x hidden] gradient (so more heads make a smaller step)."""
    per_head = FlopEstimate(0, 6 * tokens * width * hidden) + newton_schulz(width, hidden, steps).scaled(3)
    return per_head.scaled(batch * heads)
