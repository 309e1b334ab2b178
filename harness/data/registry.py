"""Data sources by name, so experiment YAML files can say `source: re10k` plus keyword options."""
from __future__ import annotations

import inspect
from typing import Any, Callable

from ..errors import DataError
from .source import Source

_SOURCES: dict[str, Callable[..., Source]] = {}


def register_source(name: str):
    """Class decorator: `@register_source("re10k")` on a Source subclass whose __init__ takes the options.
    A taken name is refused: rows name their source, and a silent replacement would mislabel them."""
    def add(cls: Callable[..., Source]) -> Callable[..., Source]:
        if name in _SOURCES:
            raise DataError(f"data source {name!r} is registered twice ({_SOURCES[name].__module__} and {cls.__module__}); "
                            "a plugin must pick its own name")
        _SOURCES[name] = cls
        cls.source_name = name
        return cls
    return add


def list_sources() -> list[str]:
    return sorted(_SOURCES)


def source_options(name: str) -> list[str]:
    """The keyword options `open_source(name, ...)` accepts."""
    return [p for p in inspect.signature(_SOURCES[name]).parameters if p != "self"]


def open_source(name: str, **options: Any) -> Source:
    """Open a registered data source: `open_source("synthetic_object", count=64, seed=0, image_size=64)`,
    `open_source("re10k", root=..., image_size=256)`. Unknown names/options raise a one-line DataError."""
    if name not in _SOURCES:
        raise DataError(f"data source {name!r} is unknown; registered: {', '.join(list_sources())}")
    allowed = source_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise DataError(f"data source {name!r}: unknown option {unknown[0]!r}; allowed: {', '.join(allowed)}")
    try:
        inspect.signature(_SOURCES[name]).bind(**options)
    except TypeError as error:
        raise DataError(f"data source {name!r}: {error}; options: {', '.join(allowed)}") from None
    return _SOURCES[name](**options)
