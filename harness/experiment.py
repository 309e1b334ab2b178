"""Experiments are data: a YAML file names its kind (profile / evaluate / train ...) and is loaded
into that kind's dataclass, with a one-line error for any unknown key or wrong type."""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Union

import yaml

from .errors import ConfigError as ExperimentError  # noqa: E402  (the old name, until every kind is on the schema)


@dataclass
class Published:
    """Numbers from a paper, printed beside ours; every row keeps its source."""
    source: str
    rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Experiment:
    """Fields every experiment has; each kind subclasses this with its own."""
    name: str
    kind: str
    description: str = ""
    output_dir: str = ""

    def results_dir(self) -> Path:
        return Path(self.output_dir or f"results/{self.name}")


@dataclass
class ExperimentKind:
    spec: type[Experiment]
    run: Callable[..., Any]


_KINDS: dict[str, ExperimentKind] = {}


def register_kind(name: str, spec: type[Experiment]):
    """Decorator for a kind's runner: `@register_kind("profile", ProfileExperiment)`."""
    def add(run: Callable[..., Any]) -> Callable[..., Any]:
        _KINDS[name] = ExperimentKind(spec, run)
        return run
    return add


def kinds() -> dict[str, ExperimentKind]:
    # Importing the runners registers them; done lazily so that `harness.experiment` stays light.
    from . import runners  # noqa: F401
    return _KINDS


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def coerce(tp: Any, value: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, building nested dataclasses; raise ExperimentError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        for option in args:
            try:
                return coerce(option, value, where)
            except ExperimentError:
                continue
        raise ExperimentError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ExperimentError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ExperimentError(f"{where}: expected a list of {_type_name(args[0])}, got {value!r}")
        return [coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ExperimentError(f"{where}: expected a mapping, got {value!r}")
        return {coerce(args[0], k, where): coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is type(None):
        if value is None:
            return None
        raise ExperimentError(f"{where}: expected null, got {value!r}")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise ExperimentError(f"{where}: expected int, got {value!r}")
    if isinstance(value, tp):
        return value
    raise ExperimentError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ExperimentError(f"{where}: expected a mapping for {cls.__name__}, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ExperimentError(f"{where}: unknown key '{unknown[0]}'; allowed: {sorted(fields)}")
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = coerce(hints[name], data[name], f"{where}.{name}" if where else name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ExperimentError(f"{where}: missing required key '{name}'")
    try:
        return cls(**values)
    except (ValueError, KeyError, TypeError) as error:
        if isinstance(error, ExperimentError):
            raise
        raise ExperimentError(f"{where}: {error}") from None


def check_choice(value: str, allowed: list[str], where: str) -> None:
    if value not in allowed:
        raise ExperimentError(f"{where}: unknown value {value!r}; allowed: {allowed}")


def check_models(names: list[str], where: str) -> None:
    from models import list_models
    for i, name in enumerate(names):
        check_choice(name, list_models(), f"{where}[{i}]")


def apply_overrides(data: dict[str, Any], overrides: list[str], where: str) -> dict[str, Any]:
    """`key.sub=value` assignments (values parsed as YAML) on top of the file."""
    for item in overrides:
        if "=" not in item:
            raise ExperimentError(f"{where}: override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        target = data
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ExperimentError(f"{where}: override {item!r}: {part!r} is not a mapping")
        target[parts[-1]] = yaml.safe_load(raw)
    return data


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    path = Path(path)
    if not path.is_file():
        raise ExperimentError(f"{path}: experiment file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ExperimentError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ExperimentError(f"{path}: expected a mapping at top level, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [], str(path))
    registry = kinds()
    kind = data.get("kind")
    if kind not in registry:
        raise ExperimentError(f"{path}: key 'kind': unknown value {kind!r}; allowed: {sorted(registry)}")
    data.setdefault("name", path.stem)
    return from_dict(registry[kind].spec, data, str(path))


def run_experiment(path: str | Path, overrides: list[str] | None = None, **options: Any) -> Any:
    experiment = load_experiment(path, overrides)
    return kinds()[experiment.kind].run(experiment, **options)
