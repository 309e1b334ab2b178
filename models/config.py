"""One dataclass describes every variant's size; presets name the sizes the harness uses."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of an LVSM-family model.

    Each variant reads its own depth fields: decoder-only LVSM `depth`; the encoder-decoder
    `encoder_depth`, `decoder_depth` and `n_latents`; Efficient-LVSM `stream_depth` blocks in each of
    its two streams; LaCT `depth` blocks and `fast_weight_ratio`, the hidden width of its fast-weight
    SwiGLU over each head's width (2 or 4 in the released scene models), `fast_weight_heads` fast-weight
    heads splitting `dim` (one in every released model), and how its Newton-Schulz step computes:
    `newton_schulz_dtype` (bfloat16, the official step; float32 for portable parity) and, on a CPU,
    `bfloat16_kernel` (`native`: PyTorch's bfloat16 matmul as the official code; `float32`: the same
    bfloat16 products summed by the float32 kernel; `auto`: native where the CPU has bfloat16 units).
    `camera_encoding` says how cameras reach the network (for the variants that read it): `plucker`,
    Plücker raymaps on the tokens (the official models); `prope` / `gta`, cameras inside attention
    (models.prope), the tokens carrying only each pixel's direction in its own camera's frame; both.
    `latent_init_std` is the std of the encoder-decoder's latent tokens at initialisation: 0.02 as
    in the official code; small from-scratch runs may raise it (see experiments/convergence.yaml).
    `image_size` is only the resolution the preset is profiled and trained at: no weight depends on
    it, so a model renders any size divisible by `patch_size`.
    """

    image_size: int = 256
    patch_size: int = 8
    dim: int = 768
    head_dim: int = 64
    mlp_ratio: int = 4
    depth: int = 24
    encoder_depth: int = 12
    decoder_depth: int = 12
    n_latents: int = 3072
    stream_depth: int = 12
    qk_norm: bool = True
    depth_init: bool = True
    latent_init_std: float = 0.02
    fast_weight_ratio: int = 2
    fast_weight_heads: int = 1
    newton_schulz_dtype: str = "bfloat16"
    bfloat16_kernel: str = "auto"
    camera_encoding: str = "plucker"

    # Fields that take one of a few names.
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "newton_schulz_dtype": ("bfloat16", "float32"),
        "bfloat16_kernel": ("auto", "native", "float32"),
        "camera_encoding": ("plucker", "prope", "gta", "plucker+prope"),
    }

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in self.CHOICES and value not in self.CHOICES[f.name]:
                raise ValueError(f"ModelConfig.{f.name}: expected one of {', '.join(self.CHOICES[f.name])}, got {value!r}")
            if f.type in ("int", int) and (not isinstance(value, int) or isinstance(value, bool)):
                raise TypeError(f"ModelConfig.{f.name}: expected an int, got {value!r}")
            if f.type in ("int", int) and value <= 0:
                raise ValueError(f"ModelConfig.{f.name}: expected a positive int, got {value}")
            if f.type in ("float", float):
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise TypeError(f"ModelConfig.{f.name}: expected a number, got {value!r}")
                if not value > 0:
                    raise ValueError(f"ModelConfig.{f.name}: expected a positive number, got {value}")
                object.__setattr__(self, f.name, float(value))
        if self.dim % self.head_dim:
            raise ValueError(f"ModelConfig.dim={self.dim} is not divisible by head_dim={self.head_dim}")
        if self.dim % self.fast_weight_heads:
            raise ValueError(f"ModelConfig.dim={self.dim} is not divisible by fast_weight_heads={self.fast_weight_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"ModelConfig.image_size={self.image_size} is not divisible by patch_size={self.patch_size}"
            )

    @property
    def n_heads(self) -> int:
        return self.dim // self.head_dim

    @property
    def tokens_per_view(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, **overrides: Any) -> "ModelConfig":
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise KeyError(f"unknown model config key(s) {unknown}; allowed: {sorted(known)}")
        return replace(self, **overrides)


# `paper` matches the official models (LVSM ICLR 2025; Efficient-LVSM ICLR 2026; LaCT's released 24-block
# scene model). `small` is sized so
# that a 2-core CPU profiles a forward pass in well under a second at N=2; `tiny` is the fixtures' size.
PRESETS: dict[str, ModelConfig] = {
    "paper": ModelConfig(),
    "small": ModelConfig(image_size=64, patch_size=8, dim=256, head_dim=64, depth=6,
                         encoder_depth=3, decoder_depth=3, n_latents=256, stream_depth=3),
    "tiny": ModelConfig(image_size=32, patch_size=8, dim=64, head_dim=16, depth=2,
                        encoder_depth=1, decoder_depth=1, n_latents=16, stream_depth=2),
}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; allowed: {sorted(PRESETS)}") from None
