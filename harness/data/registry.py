"""Data sources by name, so experiment YAML files can say `source: re10k` plus keyword options."""
from __future__ import annotations

import inspect
from typing import Any, Callable

from models.registry import Registry

from ..errors import DataError
from .source import Source

SOURCES: Registry[Callable[..., Source]] = Registry("data source", DataError, DataError)


def register_source(name: str):
    """Class decorator: `@register_source("re10k")` on a Source subclass whose __init__ takes the options.
    A taken name is refused: rows name their source, and a silent replacement would mislabel them."""
    def add(cls: Callable[..., Source]) -> Callable[..., Source]:
        SOURCES.add(name, cls)
        cls.source_name = name
        return cls
    return add


def list_sources() -> list[str]:
    return sorted(SOURCES.names())


def source_options(name: str) -> list[str]:
    """The keyword options `open_source(name, ...)` accepts."""
    return [p for p in inspect.signature(SOURCES.get(name)).parameters if p != "self"]


def open_source(name: str, **options: Any) -> Source:
    """Open a registered data source: `open_source("synthetic_object", count=64, seed=0, image_size=64)`,
    `open_source("re10k", root=..., image_size=256)`. Unknown names/options raise a one-line DataError."""
    allowed = source_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DataError(f"data source {name!r}: unknown option {unknown[0]!r}; allowed: {', '.join(allowed)}")
    try:
        inspect.signature(SOURCES.get(name)).bind(**options)
    except TypeError as error:
        raise DataError(f"data source {name!r}: {error}; options: {', '.join(allowed)}") from None
    return SOURCES.get(name)(**options)
