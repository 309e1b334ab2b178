"""Plugins: Python files outside the repository that register variants (`models.register`), data
sources (`harness.data.register_source`) or experiment kinds (`harness.schema.register_kind`).

`--plugin PATH.py` on every command and `plugins: [...]` in an experiment import each file once.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import sys
from pathlib import Path

from .errors import ConfigError

log = logging.getLogger(__name__)
_LOADED: dict[Path, str] = {}


def load_plugin(path: str | Path) -> str:
    """Import the file (once per process) under a private module name; returns that name."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"plugin {path}: file not found")
    resolved = path.resolve()
    if resolved in _LOADED:
        return _LOADED[resolved]
    name = f"lvsm_bench_plugin_{resolved.stem}_{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise ConfigError(f"plugin {path}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # a plugin's own bug is reported as one line naming the file
        del sys.modules[name]
        raise ConfigError(f"plugin {path}: import failed ({type(error).__name__}: {error})") from error
    _LOADED[resolved] = name
    log.info("plugin %s loaded", path)
    return name


def load_plugins(paths: list[str] | tuple[str, ...]) -> None:
    for path in paths:
        load_plugin(path)
