"""One registry of model constructors, addressed by name (timm-style), each with its card.

A variant is described once, where it is registered: `@register("name", card=ModelCard(...),
config=ItsConfig, presets={...})` on an `NVSModel` subclass. The card carries everything the harness
shows about it (display label and colour, paper, official parameter count, published numbers); the
config class its fields; the class what it offers (`NVSModel.capabilities`). Tables, plots, tests and
experiments derive their lists from here and never keep their own. A file outside the repository
registers a variant the same way and is loaded with `--plugin`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Generic, Iterator, Mapping, TypeVar

from .base import NVSModel
from .config import VariantConfig

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> entries, for everything the harness looks up by name (models, data sources, experiment
    kinds). An entry may be a "module:attr" address, imported on first use. A taken name is refused with
    `error` (a plugin must pick its own name; a silent replacement would mislabel every row), and an
    unknown one names the registered ones."""

    def __init__(self, what: str, error: type[Exception] = ValueError, missing: type[Exception] = KeyError):
        self.what, self.error, self.missing = what, error, missing
        self._entries: dict[str, T | str] = {}

    def add(self, name: str, entry: T | str) -> None:
        if name in self._entries:
            raise self.error(f"{self.what} {name!r} is registered twice ({_origin(self._entries[name])} and {_origin(entry)})")
        self._entries[name] = entry

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise self.missing(f"unknown {self.what} {name!r}; registered: {', '.join(self._entries)}")
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            entry = self._entries[name] = getattr(importlib.import_module(module), attr)
        return entry

    def names(self) -> list[str]:
        """In registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)


def _origin(entry: Any) -> str:
    return entry if isinstance(entry, str) else getattr(entry, "__module__", type(entry).__module__)


@dataclass(frozen=True)
class Published:
    """Numbers a paper or release reports for a variant in one table, where they come from, and the
    setting the source states for them (the harness's `report.Setting` fields as a plain mapping: device,
    model, views, data, counting, training; whatever the source does not state is left out)."""
    source: str
    values: Mapping[str, Any]
    setting: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelCard:
    """What the harness shows about a variant. `published`: table name -> the numbers it reports there
    (e.g. "efficiency", "re10k"). `official_params`: parameter count of the official paper-size model,
    for variants with an official release. `ablation_of`: the variant an ablation arm changes."""
    label: str
    color: str = "tab:gray"
    paper: str = ""
    code: str = ""
    official_params: int | None = None
    ablation_of: str = ""
    published: Mapping[str, Published] = field(default_factory=dict)


@dataclass(frozen=True)
class Registration:
    """A variant as registered: its class, card, config class and named presets."""
    cls: type[NVSModel]
    card: ModelCard
    config: type[VariantConfig]
    presets: Mapping[str, VariantConfig]


MODELS: Registry[Registration] = Registry("model")


def register(name: str, card: ModelCard | None = None, config: type[VariantConfig] | None = None,
             presets: Mapping[str, VariantConfig] | None = None):
    """Class decorator: `@register("name", card=ModelCard(...), config=MyConfig, presets={"tiny": MyConfig(...)})`.
    An ablation or other subclass of a registered variant may leave out `config` and `presets`: it then
    takes its parent's. Registering a taken name raises (a plugin must pick its own name)."""
    def add(cls: type[NVSModel]) -> type[NVSModel]:
        if name in MODELS:
            MODELS.add(name, cls)  # refused, naming both
        parent = next((MODELS.get(base.name) for base in cls.__mro__[1:] if getattr(base, "name", "") in MODELS), None)
        config_cls = config or (parent.config if parent else None)
        if config_cls is None:
            raise TypeError(f"register({name!r}): give `config`, the variant's config class (a VariantConfig subclass)")
        own_presets = dict(presets if presets is not None else (parent.presets if parent else {}))
        for preset, value in own_presets.items():
            if not isinstance(value, config_cls):
                raise TypeError(f"register({name!r}): preset {preset!r} is a {type(value).__name__}, expected {config_cls.__name__}")
        MODELS.add(name, Registration(cls, card or ModelCard(label=name), config_cls, own_presets))
        cls.name = name
        return cls
    return add


def list_models() -> list[str]:
    """Registered names: the variants that are no ablation (the released ones, then plugins) in registration
    order, then the ablations in registration order."""
    return released_models() + [name for name in MODELS.names() if MODELS.get(name).card.ablation_of]


def released_models() -> list[str]:
    """The variants that are not an ablation of another."""
    return [name for name in MODELS.names() if not MODELS.get(name).card.ablation_of]


def model_class(name: str) -> type[NVSModel]:
    return MODELS.get(name).cls


def model_card(name: str) -> ModelCard:
    return MODELS.get(name).card


def config_class(name: str) -> type[VariantConfig]:
    return MODELS.get(name).config


def presets(name: str) -> Mapping[str, VariantConfig]:
    return MODELS.get(name).presets


def preset_names() -> list[str]:
    """Every preset name some registered variant has, in first-registered order."""
    return list(dict.fromkeys(preset for name in MODELS.names() for preset in MODELS.get(name).presets))


def label(name: str) -> str:
    """Display name of a registered variant; any other name (a published method) as it is."""
    return MODELS.get(name).card.label if name in MODELS else name


def model_config(name: str, preset: str | VariantConfig | Mapping[str, Any] = "paper", **overrides: Any) -> VariantConfig:
    """`name`'s config: a named preset, a config of its class, or a dict of fields (from a checkpoint
    or record; the fields its class lacks are dropped: another variant's config or an older layout
    holds them, and this variant never read them), then `overrides`, which must be its fields."""
    entry = MODELS.get(name)
    if isinstance(preset, VariantConfig):
        if not isinstance(preset, entry.config):
            raise TypeError(f"model {name!r}: expected a {entry.config.__name__}, got a {type(preset).__name__}")
        config = preset
    elif isinstance(preset, str):
        if preset not in entry.presets:
            raise KeyError(f"model {name!r} has no preset {preset!r}; its presets: {', '.join(entry.presets)}")
        config = entry.presets[preset]
    elif isinstance(preset, Mapping):
        known = entry.config.field_names()
        config = entry.config(**{key: value for key, value in preset.items() if key in known})
    else:
        raise TypeError(f"preset: expected a preset name, a config or a dict, got {type(preset).__name__}")
    unknown = [key for key in overrides if key not in entry.config.field_names()]
    if unknown:
        raise ValueError(f"model {name!r} has no config field {unknown[0]!r}; its fields: {', '.join(entry.config.field_names())}")
    config = config.with_overrides(**overrides) if overrides else config
    entry.cls.check_config(config)
    return config


def build_model(name: str, preset: str | VariantConfig | Mapping[str, Any] = "paper", **overrides: Any) -> NVSModel:
    """`build_model("efficient_lvsm", preset="small", stream_depth=4)`."""
    return model_class(name)(model_config(name, preset, **overrides))
