"""Experiments are data: a YAML file names its kind and is validated by that kind's pydantic model.

Every model here is strict (no silent coercion), forbids unknown keys and is frozen. The shared
parts (measurement settings, a model reference, a data reference, published rows) are defined once
and reused by every kind. Kinds are named by `"module:attr"` strings and imported on first use, so no
module imports every kind. `extends: other.yaml` builds one file on another; `--set key.sub=value`
overrides any key; `plugins: [file.py]` registers variants or data sources before validation.
Any mistake becomes one `ConfigError` line: `FILE: dotted.key: message`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Generic, Literal, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.registry import Registry

from .errors import ConfigError
from .report import Setting

# --------------------------------------------------------------------------------------- fields


def _registered_model(name: str) -> str:
    from models import list_models
    if name not in list_models():
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    return name


def _preset(name: str) -> str:
    from models import preset_names
    if name != "auto" and name not in preset_names():
        raise ValueError(f"unknown preset {name!r}; allowed: auto, {', '.join(preset_names())}")
    return name


def _source(name: str) -> str:
    from .data import list_sources
    if name not in list_sources():
        raise ValueError(f"unknown data source {name!r}; registered: {', '.join(list_sources())}")
    return name


ModelName = Annotated[str, AfterValidator(_registered_model)]
PresetName = Annotated[str, AfterValidator(_preset)]  # a preset some variant registers, or auto (small on CPU, paper on CUDA)
def _protocol(name: str) -> str:
    from .data import PROTOCOLS
    if name not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {name!r}; allowed: {', '.join(PROTOCOLS)}")
    return name


SourceName = Annotated[str, AfterValidator(_source)]
ProtocolName = Annotated[str, AfterValidator(_protocol)]
Positive = Annotated[int, Field(gt=0)]
NonNegative = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Device = Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
SdpaBackend = Literal["auto", "flash", "efficient", "cudnn", "math"]


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# --------------------------------------------------------------------------- shared sub-models


class Measurement(Spec):
    """How one timed point is measured. `time_budget_s`: per point; points whose runs would overrun it
    make fewer timed runs (never under `min_runs`); the row records how many were made.
    `deadline_s`: no new point is started after this long (a rerun measures the rest)."""
    device: Device = "auto"
    dtype: Dtype = "auto"
    warmup: NonNegative = 3
    runs: Positive = 20
    min_runs: Positive = 5
    time_budget_s: PositiveFloat | None = None
    threads: Positive | None = None  # torch CPU threads (None: torch's default); recorded in every row
    deadline_s: PositiveFloat | None = None
    # Spread (IQR / median) above which a point is marked noisy in every table.
    noisy_iqr: PositiveFloat = 0.25
    compile: bool = False  # torch.compile the model; compile time is reported apart from latency
    sdpa_backend: SdpaBackend = "auto"

    def key(self) -> dict[str, Any]:
        """What changes a measured number (device, dtype and threads are keyed by the run context;
        the deadline only decides which points are reached)."""
        return self.model_dump(exclude={"device", "dtype", "threads", "deadline_s"})

    def eager_only(self, kind: str, why: str) -> "Measurement":
        """For a kind that times code torch.compile does not wrap: `compile: true` is refused."""
        if self.compile:
            raise ValueError(f"compile: true is not supported by {kind} ({why})")
        return self


class Ratio(Spec):
    """The pair of a ratio: `model`'s number over `baseline`'s, at the same point."""
    model: ModelName
    baseline: ModelName

    @property
    def names(self) -> list[str]:
        return [self.model, self.baseline]


class ModelRef(Spec):
    """A registered variant at a preset with config overrides, or a checkpoint (ours, or an official
    one of `name`'s variant)."""
    name: ModelName
    preset: PresetName = "small"
    overrides: dict[str, Any] = {}
    checkpoint: str = ""
    label: str = ""

    @model_validator(mode="after")
    def _overrides_fit(self) -> "ModelRef":
        from models import model_config
        if self.checkpoint and self.overrides:
            # A checkpoint's config is the one it was trained with (official checkpoints: Plücker rays, the
            # sizes in their weights); an override would be ignored or would not fit its weights.
            raise ValueError(f"overrides {sorted(self.overrides)} do not apply to checkpoint {self.checkpoint}: "
                             "its model is built from the config it holds")
        model_config(self.name, "paper" if self.preset == "auto" else self.preset, **self.overrides)
        return self

    def config(self):
        """The variant's config this reference builds (`auto` must have been resolved to a preset)."""
        from models import model_config
        return model_config(self.name, self.preset, **self.overrides)


class DataRef(Spec):
    """Where examples come from: a registered source with its `harness.data.open_source` options
    (strings may use $ENV_VARS), and how many context and target views an example has."""
    source: SourceName = "synthetic_scene"
    options: dict[str, Any] = {}
    n_input: Positive = 2
    n_target: Positive = 3
    seed: int = 0
    normalize: bool = True  # scene pose normalization, as the LVSM loader does
    # How frames are resized and cropped to the image size (harness.data.protocols): `lvsm` follows the
    # LVSM / Efficient-LVSM loader, `pixelsplat` pixelSplat / MVSplat. Sources that render at the size
    # resize nothing; the tables say which protocol applied.
    protocol: ProtocolName = "lvsm"

    @model_validator(mode="after")
    def _options_the_source_takes(self) -> "DataRef":
        """An option the source does not take is refused when the experiment is read (and by `validate`),
        not when the first point opens the source."""
        from .data.registry import source_options
        allowed = source_options(self.source)
        for where, options in (("options", self.options), ("eval_options", getattr(self, "eval_options", {}))):
            unknown = sorted(set(options) - set(allowed))
            if unknown:
                raise ValueError(f"{where}.{unknown[0]}: data source {self.source!r} takes no such option; it takes: "
                                 f"{', '.join(allowed)}")
        return self


Row = TypeVar("Row", bound=Spec)


class Published(Spec, Generic[Row]):
    """Numbers from a paper, printed beside ours; the rows are typed per kind, so a mistyped key is
    refused instead of printing n/a."""
    source: str
    rows: list[Row] = []
    # What the source states of where its numbers come from (device, model size, resolution, views, data,
    # counting); a field it does not state stays unset and keeps a difference to ours from being computed.
    setting: Setting = Setting()


class PaperEntry(Spec):
    """A table or figure of the papers that an experiment reproduces, for the paper index
    (results/README.md): its title, where the published one is, the make target, and what it needs
    beyond this machine (environment variables that point at data or weights, a CUDA device)."""
    title: str
    published: str
    target: str
    needs_env: list[str] = []
    needs_cuda: bool = False
    needs: str = ""  # how to provide what is missing, in words


def missing_path(key: str, raw: str) -> str:
    """Why a configured path ($ENV_VARS allowed) cannot be used here, or ''."""
    import os
    value = os.path.expandvars(raw)
    if not value or "$" in value:
        return f"{key} is not set ({raw!r})"
    return "" if Path(value).exists() else f"{key} {value} does not exist"


class ExperimentBase(Spec):
    """Keys every experiment has."""
    kind: str
    name: str
    description: str = ""
    output_dir: str = ""
    plugins: list[str] = []
    source_file: str = ""  # the YAML it was read from (set by the loader; paths in it are relative to it)
    paper: list[PaperEntry] = []  # the paper tables / figures this experiment covers
    # Its report's facts (speed-ups, exponents, PSNR with seed range, parameters) are columns of the
    # one-screen comparison that opens the paper index and the site.
    on_index: bool = False

    def results_dir(self) -> Path:
        return Path(self.output_dir or f"results/{self.name}")

    def preset_device(self) -> str:
        """The device the experiment's models run on, which an `auto` preset is resolved against
        ("meta": they are only counted)."""
        return "auto"

    def missing_resources(self) -> list[str]:
        """What this machine lacks to run the experiment (data folders, checkpoints, official checkouts),
        one line each; `validate` reports them, and the kind refuses to start without them."""
        return []


# ------------------------------------------------------------------------------------- kinds


@dataclass(frozen=True)
class RunOptions:
    """What the command line adds to an experiment."""
    preset: str | None = None
    checkpoints: tuple[str, ...] = ()
    progress: bool = True
    ship_weights: bool = False  # write a training study's weights into the repository's folder it names
    force_ship: bool = False  # ... even over shipped weights of another model config
    from_records: bool = False  # the report from the rows recorded whatever code version wrote them; measure nothing
    keep_recorded: bool = False  # as from_records, but train the runs that have no recorded row yet

    def given(self) -> dict[str, str]:
        """The options a kind must read for them to take effect, those given: name -> command-line flag."""
        flags = {"checkpoints": "--checkpoint", "ship_weights": "--ship-weights", "force_ship": "--force-ship",
                 "from_records": "--from-records", "keep_recorded": "--keep-recorded"}
        return {name: flag for name, flag in flags.items() if getattr(self, name)}


@dataclass(frozen=True)
class Kind:
    spec: type[ExperimentBase]
    run: Callable[[Any, RunOptions], Any]
    summary: str
    # RunOptions.given() names the kind honours; any other given is refused. Every kind builds its report
    # from its records alone when asked (`--from-records`).
    reads: frozenset[str] = frozenset({"from_records"})


KINDS: Registry[Kind] = Registry("experiment kind", ConfigError, ConfigError)
for _name, _address in {
    "profile": "harness.profile.kinds:PROFILE",
    "profile_flops": "harness.profile.kinds:FLOPS",
    "profile_kv_cache": "harness.profile.kinds:KV_CACHE",
    "profile_efficiency": "harness.profile.kinds:EFFICIENCY",
    "profile_one_more_target": "harness.profile.one_more_target:ONE_MORE_TARGET",
    "profile_camera_encoding": "harness.profile.camera_cost:CAMERA_COST",
    "op_profile": "harness.profile.ops:OP_PROFILE",
    "parity": "harness.parity.kind:PARITY",
    "evaluate": "harness.evaluate.kind:EVALUATE",
    "train": "harness.train.kinds:TRAIN",
    "convergence": "harness.train.kinds:CONVERGENCE",
    "view_generalization": "harness.train.view_generalization:VIEW_GENERALIZATION",
}.items():
    KINDS.add(_name, _address)


def register_kind(name: str, kind: str | Kind) -> None:
    """Add a kind (from a plugin): a `Kind` or its `"module:attr"` address. Names are never reused."""
    KINDS.add(name, kind)


def get_kind(name: str) -> Kind:
    return KINDS.get(name)


# ------------------------------------------------------------------------------------ loading


def format_validation_error(where: str, error: ValidationError) -> str:
    """The first problem as `where: dotted.key: message (got value)`, plus how many more there are."""
    problems = error.errors(include_url=False)
    first = problems[0]
    key = ".".join(str(part) for part in first["loc"] if not str(part).startswith("function-"))
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] != "missing" and "input" in first and not isinstance(first["input"], dict):
        message += f" (got {first['input']!r})"
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{where}: {key + ': ' if key else ''}{message}{more}"


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: experiment file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {error.start}: {error.reason}); expected an experiment "
                          "YAML saved as UTF-8") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot be read ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at top level, got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_experiment(path: str | Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's keys on top of the file it `extends` (a path relative to it), recursively."""
    path = Path(path)
    if path.resolve() in seen:
        raise ConfigError(f"{path}: extends itself through {' -> '.join(str(p) for p in seen)}")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends: expected a file path, got {parent!r}")
    base = read_experiment(path.parent / parent, (*seen, path.resolve()))
    base.pop("name", None)  # a child is its own experiment: its name comes from its own file
    base.pop("output_dir", None)
    return _merge(base, data)


_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def apply_overrides(data: dict[str, Any], overrides: list[str], where: str) -> dict[str, Any]:
    """`key.sub=value` assignments, values parsed as YAML, on top of the file's keys."""
    data = _merge({}, data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not _KEY.match(key):
            raise ConfigError(f"{where}: --set {item!r}: expected KEY=VALUE with a dotted key")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise ConfigError(f"{where}: --set {key}: value {raw!r} is not valid YAML "
                              f"({str(error).splitlines()[0]})") from None
        target, parts = data, key.split(".")
        for depth, part in enumerate(parts[:-1]):
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{where}: --set {key}: {'.'.join(parts[:depth + 1])} is not a mapping")
        target[parts[-1]] = value
    return data


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> ExperimentBase:
    """Read, extend, override, load its plugins, and validate with the kind's model."""
    from .plugins import load_plugins
    path = Path(path)
    data = apply_overrides(read_experiment(path), overrides or [], str(path))
    data.setdefault("name", path.stem)
    data["source_file"] = str(path)
    plugins = data.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError(f"{path}: plugins: expected a list of file paths, got {plugins!r}")
    load_plugins([p if Path(p).is_absolute() or Path(p).exists() else str(path.parent / p) for p in plugins])
    kind = data.get("kind")
    if not isinstance(kind, str):
        raise ConfigError(f"{path}: kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    try:
        spec = get_kind(kind).spec
    except ConfigError as error:
        raise ConfigError(f"{path}: kind: {error}") from None
    try:
        return spec.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(str(path), error)) from None


def revalidate(spec: ExperimentBase, **changes: Any) -> ExperimentBase:
    """A copy of a frozen experiment with `changes`, checked again (model_copy alone does not check)."""
    try:
        return type(spec).model_validate({**spec.model_dump(), **changes})
    except ValidationError as error:
        raise ConfigError(format_validation_error(spec.name, error)) from None


# ---------------------------------------------------------------------------------- the preset rule


def _preset_holders(spec: Spec, data: dict[str, Any]) -> list[dict[str, Any]]:
    """The parts of `data` (the dump of `spec`) that name the preset of a model built from a preset
    (a checkpoint's model has the preset it was saved with)."""
    fields = type(spec).model_fields
    holders = [data] if "preset" in fields and not getattr(spec, "checkpoint", "") else []
    for name in fields:
        value, raw = getattr(spec, name), data[name]
        pairs = zip(value, raw) if isinstance(value, (list, tuple)) else [(value, raw)]
        holders += [h for v, r in pairs if isinstance(v, Spec) for h in _preset_holders(v, r)]
    return holders


def with_preset(spec: ExperimentBase, preset: str | None = None) -> ExperimentBase:
    """The one preset rule, applied to every experiment before its kind runs. `preset` (the command
    line's `--preset`) replaces the preset of every model the experiment builds from a preset, never a
    checkpoint's; then `auto` becomes the preset of the device the models run on (`AUTO_PRESET`:
    paper on CUDA and when only counted, small on a CPU). Kinds see concrete presets only."""
    from .runtime import resolve_preset
    data = spec.model_dump()
    holders = _preset_holders(spec, data)
    if preset is not None:
        if not holders:
            raise ConfigError(f"--preset {preset}: every model of {spec.name} (kind {spec.kind}) comes from a checkpoint, "
                              "at the preset it was trained at; --preset applies to models built from a preset")
        try:
            _preset(preset)
        except ValueError as error:
            raise ConfigError(f"--preset: {error}") from None
    for holder in holders:
        holder["preset"] = resolve_preset(preset or holder["preset"], spec.preset_device())
    return revalidate(spec, **data)


def run_spec(spec: ExperimentBase, options: RunOptions = RunOptions()) -> Any:
    """Every experiment runs through here: the preset rule once, then its kind. Under torchrun the
    ranks join one process group first, over the backend of the device the experiment runs on."""
    from .distributed import init_world
    kind = get_kind(spec.kind)
    ignored = [flag for name, flag in options.given().items() if name not in kind.reads]
    if ignored:
        raise ConfigError(f"{spec.name}: {ignored[0]} is not read by kind {spec.kind!r}, so it would be ignored; "
                          f"{'it reads ' + ', '.join(sorted(kind.reads)) if kind.reads else 'it reads no run option'}")
    init_world(spec.preset_device())
    return kind.run(with_preset(spec, options.preset), options)


def run_experiment(path: str | Path, overrides: list[str] | None = None, **options: Any) -> Any:
    """`run_experiment("experiments/bench.yaml", ["measure.runs=5"], progress=False)` from Python."""
    return run_spec(load_experiment(path, overrides), RunOptions(**options))
