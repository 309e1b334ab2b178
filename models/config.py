"""What every variant's config shares, and the sizes its presets are built from.

Each variant owns a frozen config: a subclass of `VariantConfig` adding its own fields (depths, latents,
fast weights ...), registered with it together with its presets (models.registry). The base holds only
what every variant reads: the image and token sizes, the blocks' width and head width, the MLP ratio,
the attention's QK-norm, depth-scaled initialisation, and how cameras reach the network.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar

# How cameras reach the network: `plucker`, Plücker raymaps on the tokens (the official models);
# `prope` / `gta`, cameras inside attention (models.prope), the tokens carrying only each pixel's ray
# direction in its own camera's frame; `plucker+prope`, both. A variant declares which it supports.
CAMERA_ENCODINGS = ("plucker", "prope", "gta", "plucker+prope")


@dataclass(frozen=True)
class VariantConfig:
    """`image_size` is only the resolution a preset is profiled and trained at: no weight depends on
    it, so a model renders any size divisible by `patch_size`."""

    image_size: int = 256
    patch_size: int = 8
    dim: int = 768
    head_dim: int = 64
    mlp_ratio: int = 4
    qk_norm: bool = True
    depth_init: bool = True
    camera_encoding: str = "plucker"

    # Fields that take one of a few names; a subclass extends it with its own.
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"camera_encoding": CAMERA_ENCODINGS}

    def __post_init__(self) -> None:
        name = type(self).__name__
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in self.CHOICES and value not in self.CHOICES[f.name]:
                raise ValueError(f"{name}.{f.name}: expected one of {', '.join(self.CHOICES[f.name])}, got {value!r}")
            if f.type in ("bool", bool) and not isinstance(value, bool):
                raise TypeError(f"{name}.{f.name}: expected true or false, got {value!r}")
            if f.type in ("int", int) and (not isinstance(value, int) or isinstance(value, bool)):
                raise TypeError(f"{name}.{f.name}: expected an int, got {value!r}")
            if f.type in ("int", int) and value <= 0:
                raise ValueError(f"{name}.{f.name}: expected a positive int, got {value}")
            if f.type in ("float", float):
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise TypeError(f"{name}.{f.name}: expected a number, got {value!r}")
                if not value > 0:
                    raise ValueError(f"{name}.{f.name}: expected a positive number, got {value}")
                object.__setattr__(self, f.name, float(value))
        if self.dim % self.head_dim:
            raise ValueError(f"{name}.dim={self.dim} is not divisible by head_dim={self.head_dim}")
        if self.image_size % self.patch_size:
            raise ValueError(f"{name}.image_size={self.image_size} is not divisible by patch_size={self.patch_size}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def own_fields(cls) -> tuple[str, ...]:
        """The fields this variant adds to the shared ones."""
        shared = set(VariantConfig.field_names())
        return tuple(f for f in cls.field_names() if f not in shared)

    @property
    def tokens_per_view(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, **overrides: Any) -> "VariantConfig":
        unknown = sorted(set(overrides) - set(self.field_names()))
        if unknown:
            raise KeyError(f"{type(self).__name__} has no field {unknown[0]!r}; its fields: {', '.join(self.field_names())}")
        return replace(self, **overrides)

    def describe(self) -> str:
        """The sizes that make this model what it is, in words, for notes and captions: the shared
        width and resolution, then the variant's own fields (those differing from the shared defaults)."""
        defaults = type(self)()
        own = ", ".join(f"{f} {getattr(self, f)}" for f in self.own_fields()
                        if isinstance(getattr(self, f), (int, float)) or getattr(self, f) != getattr(defaults, f))
        camera = "" if self.camera_encoding == "plucker" else f", cameras {self.camera_encoding}"
        return (f"dim {self.dim}, head dim {self.head_dim}{', ' + own if own else ''}, "
                f"{self.image_size}x{self.image_size} px, patch {self.patch_size}{camera}")


# The widths and resolutions every variant's presets share: `paper` matches the official models (LVSM
# ICLR 2025; Efficient-LVSM ICLR 2026; LaCT's released scene model); `small` is sized so that a 2-core
# CPU profiles a forward pass in well under a second at N=2; `tiny` is the fixtures' size. A variant's
# registration adds its own fields (depths ...) to each.
SHARED_SIZES: dict[str, dict[str, Any]] = {
    "paper": {},
    "small": {"image_size": 64, "patch_size": 8, "dim": 256, "head_dim": 64},
    # `small` at 128 px: the size the comparisons with the official code run at (parity, op profile).
    "small128": {"image_size": 128, "patch_size": 8, "dim": 256, "head_dim": 64},
    "tiny": {"image_size": 32, "patch_size": 8, "dim": 64, "head_dim": 16},
    # The training studies' scale on a CPU (about 1 M parameters at 32 px): every variant the same width,
    # its depth chosen so that the four have about the same number of parameters.
    "study": {"image_size": 32, "patch_size": 8, "dim": 128, "head_dim": 32},
}
