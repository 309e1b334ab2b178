"""One registry of model constructors, addressed by name (timm-style), each with its card.

A variant is described once, where it is registered: `@register("name", card=ModelCard(...))` on an
`NVSModel` subclass. The card carries everything the harness shows about it (display label and
colour, paper, official parameter count, published numbers, the config fields it reads), so tables,
plots, tests and experiments derive their lists from here and never keep their own. A file outside
the repository registers a variant the same way and is loaded with `--plugin`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Generic, Iterator, Mapping, TypeVar

from .base import NVSModel
from .config import ModelConfig, preset as named_preset

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


# Config fields every variant reads (sizes of the tokenizers, blocks and head).
SHARED_FIELDS = ("image_size", "patch_size", "dim", "head_dim", "mlp_ratio", "qk_norm", "depth_init")


@dataclass(frozen=True)
class Published:
    """Numbers a paper or release reports for a variant in one table, and where they come from."""
    source: str
    values: Mapping[str, Any]


@dataclass(frozen=True)
class ModelCard:
    """What the harness shows about a variant. `reads`: the ModelConfig fields the variant uses
    beyond SHARED_FIELDS (an override of any other field is refused). `published`: table name ->
    the numbers it reports there (e.g. "efficiency", "re10k"). `official_params`: parameter count of
    the official paper-size model, for variants with an official release."""
    label: str
    color: str = "tab:gray"
    reads: tuple[str, ...] = ()
    paper: str = ""
    code: str = ""
    official_params: int | None = None
    ablation_of: str = ""
    published: Mapping[str, Published] = field(default_factory=dict)

    @property
    def config_fields(self) -> tuple[str, ...]:
        return SHARED_FIELDS + tuple(self.reads)


MODELS: Registry[type[NVSModel]] = Registry("model")
_CARDS: dict[str, ModelCard] = {}


def register(name: str, card: ModelCard | None = None):
    """Class decorator. Registering a taken name raises (a plugin must pick its own name)."""
    def add(cls: type[NVSModel]) -> type[NVSModel]:
        MODELS.add(name, cls)
        cls.name = name
        _CARDS[name] = card or ModelCard(label=name)
        return cls
    return add


def list_models() -> list[str]:
    """Registered names in registration order: the released variants first, then ablations and plugins."""
    return MODELS.names()


def model_class(name: str) -> type[NVSModel]:
    return MODELS.get(name)


def model_card(name: str) -> ModelCard:
    model_class(name)
    return _CARDS[name]


def label(name: str) -> str:
    """Display name of a registered variant; any other name (a published method) as it is."""
    return _CARDS[name].label if name in _CARDS else name


def check_overrides(name: str, overrides: Mapping[str, Any]) -> None:
    """Refuse an override of a config field the variant does not read: it would be ignored silently."""
    read = model_card(name).config_fields
    unread = [key for key in overrides if key not in read]
    if unread:
        raise ValueError(f"model {name!r} does not read config field {unread[0]!r}; it reads: {', '.join(read)}")


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
    """`build_model("efficient_lvsm", preset="small", stream_depth=4)`."""
    cls = model_class(name)
    check_overrides(name, {**(preset if isinstance(preset, dict) else {}), **overrides})
    return cls(resolve_config(preset, **overrides))
