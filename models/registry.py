"""One registry of model constructors, addressed by name (timm-style)."""
from __future__ import annotations

from typing import Any

from .base import NVSModel
from .config import ModelConfig, preset as named_preset

_MODELS: dict[str, type[NVSModel]] = {}


def register(name: str):
    def add(cls: type[NVSModel]) -> type[NVSModel]:
        if name in _MODELS:
            raise KeyError(f"model {name!r} is registered twice")
        cls.name = name
        _MODELS[name] = cls
        return cls
    return add


def list_models() -> list[str]:
    return sorted(_MODELS)


def model_class(name: str) -> type[NVSModel]:
    try:
        return _MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; allowed: {list_models()}") from None


def resolve_config(preset: str | ModelConfig | dict[str, Any] = "paper", **overrides: Any) -> ModelConfig:
    if isinstance(preset, ModelConfig):
        config = preset
    elif isinstance(preset, str):
        config = named_preset(preset)
    elif isinstance(preset, dict):
        config, overrides = ModelConfig(), {**preset, **overrides}
    else:
        raise TypeError(f"preset: expected a preset name, a ModelConfig or a dict, got {type(preset).__name__}")
    return config.with_overrides(**overrides) if overrides else config


def build_model(name: str, preset: str | ModelConfig | dict[str, Any] = "paper", **overrides: Any) -> NVSModel:
    """`build_model("efficient_lvsm", preset="small", depth=4)`."""
    cls = model_class(name)
    return cls(resolve_config(preset, **overrides))
