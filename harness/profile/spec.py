"""YAML fields every profiling kind shares, and what they resolve to at run time."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

import torch

from models import PRESETS, ModelConfig, build_model
from models.base import NVSModel

from ..experiment import Experiment, ExperimentError, Published, check_choice, check_models
from ..provenance import code_version, environment
from ..records import RecordStore
from ..runtime import default_dtype, resolve_device
from .measure import MeasureSettings
from .sweep import Sweep

# `auto`: the paper preset where there is a GPU to run it, `small` on a CPU.
AUTO_PRESET = {"cuda": "paper", "cpu": "small", "meta": "paper"}
VARIANTS = ["lvsm_decoder_only", "lvsm_encoder_decoder", "efficient_lvsm"]


def _validate(check) -> None:
    # from_dict prefixes a ValueError with the file name; an ExperimentError would pass through bare.
    try:
        check()
    except ExperimentError as error:
        raise ValueError(str(error)) from None


def _positive(name: str, value: int | float | None, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise ValueError(f"{name}: expected a {'non-negative' if allow_zero else 'positive'} number, got {value}")


@dataclass
class CostSpec(Experiment):
    preset: str = "auto"
    batch: int = 1
    image_size: int | None = None  # None: the preset's
    fit_min_n: int = 8  # growth exponents are fitted over N >= this
    published: Published | None = None

    def __post_init__(self) -> None:
        _validate(lambda: check_choice(self.preset, ["auto", *PRESETS], "preset"))
        _positive("batch", self.batch)
        _positive("image_size", self.image_size)
        _positive("fit_min_n", self.fit_min_n)


@dataclass
class MeasuredSpec(CostSpec):
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    warmup: int = 3
    runs: int = 20
    min_runs: int = 5
    time_budget_s: float | None = None  # per point; see MeasureSettings
    threads: int | None = None  # CPU threads for torch (None: torch's default); recorded in every row
    deadline_s: float | None = None  # stop starting new points after this long; a rerun resumes

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive("warmup", self.warmup, allow_zero=True)
        _positive("runs", self.runs)
        _positive("min_runs", self.min_runs)
        _positive("time_budget_s", self.time_budget_s)
        _positive("threads", self.threads)
        _positive("deadline_s", self.deadline_s)
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device: expected auto, cpu, cuda or cuda:<index>, got {self.device!r}")

    def measure_settings(self) -> MeasureSettings:
        return MeasureSettings(self.warmup, self.runs, self.min_runs, self.time_budget_s)


def check_model_list(models: list[str], where: str = "models") -> None:
    if not models:
        raise ValueError(f"{where}: expected at least one model name")
    _validate(lambda: check_models(models, where))


@dataclass
class ViewGridSpec(CostSpec):
    """Kinds that sweep every model over a grid of N input and M target views. Listed before the
    other base (`class K(ViewGridSpec, MeasuredSpec)`) so that its fields and checks come last."""
    models: list[str] = field(default_factory=lambda: list(VARIANTS))
    n_inputs: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    n_targets: list[int] = field(default_factory=lambda: [1, 8])

    def __post_init__(self) -> None:
        super().__post_init__()
        check_model_list(self.models)
        for key in ("n_inputs", "n_targets"):
            values = getattr(self, key)
            if not values or any(v <= 0 for v in values):
                raise ValueError(f"{key}: expected a non-empty list of positive ints, got {values}")


@dataclass
class RunContext:
    """What a spec resolves to on this machine: device, dtype, preset and model config."""
    device: torch.device
    dtype: str
    preset: str
    config: ModelConfig
    version: str
    env: dict[str, Any] = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def point(self, **values: Any) -> dict[str, Any]:
        """A point's identity: the swept values plus everything that changes what is measured."""
        measured = {} if self.device.type == "meta" else {"threads": self.env["threads"]}
        return {"preset": self.preset, "config": self.config.to_dict(), "device": self.env["device"],
                "dtype": self.dtype, **measured, **values}

    def sweep(self, spec: Experiment) -> Sweep:
        store = RecordStore(spec.results_dir() / "rows.jsonl")
        return Sweep(store, spec.name, self.version, self.env)

    def measure_and_report(self, spec: MeasuredSpec, points: Sequence[Mapping[str, Any]],
                           measure: Callable[[Mapping[str, Any]], Mapping[str, Any]],
                           label: Callable[[Mapping[str, Any]], str], progress: bool,
                           report: Callable[[list[dict[str, Any]]], list[str]]) -> list[dict[str, Any]]:
        """Measures the points not yet recorded (until `spec.deadline_s`), prints the sweep summary,
        then the lines `report` makes of the recorded rows (it writes the tables)."""
        sweep = self.sweep(spec)
        summary = sweep.run(points, measure, label, progress, deadline_s=spec.deadline_s)
        rows = sweep.rows(points)
        print(summary.line(spec.name))
        print("\n".join(report(rows)))
        return rows

    def notes(self, spec: CostSpec, rows: Sequence[Mapping[str, Any]] = ()) -> list[str]:
        """Provenance lines; the commit is the one the `rows` were measured at (a rerun that only
        rebuilds the tables from recorded rows must not relabel them with the current commit)."""
        c = self.config
        size = (f"preset `{self.preset}` (dim {c.dim}, head dim {c.head_dim}, decoder-only depth {c.depth}, "
                f"enc-dec {c.encoder_depth}+{c.decoder_depth} with {c.n_latents} latents, Efficient-LVSM "
                f"{c.stream_depth}+{c.stream_depth}), {c.image_size}x{c.image_size} px, patch {c.patch_size}, batch {spec.batch}")
        if self.device.type == "meta":
            where = "counted: FlopCounterMode on the meta device (shapes only), forward pass, attention included"
        else:
            where = (f"measured: {self.env['device']}, dtype {self.dtype} ({'autocast' if self.dtype != 'float32' else 'no autocast'}), "
                     f"torch {self.env['torch']}, torch threads={self.env['threads']}, torch.no_grad()")
        return [where, size, "inputs: synthetic random views; weights: random init (cost does not depend on values)",
                f"code: commit {', '.join(measured_commits(rows) or [self.env['commit']])}, "
                f"records keyed by code version {self.version}"]


def measured_commits(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted({str(r["commit"]) for r in rows if r.get("commit")})


def resolve_context(spec: CostSpec, preset: str | None = None, device: str | None = None) -> RunContext:
    dev = torch.device("meta") if device == "meta" else resolve_device(device or getattr(spec, "device", "auto"))
    name = preset or spec.preset
    if name == "auto":
        name = AUTO_PRESET[dev.type]
    if name not in PRESETS:
        raise ExperimentError(f"preset: unknown value {name!r}; allowed: {['auto', *PRESETS]}")
    config = PRESETS[name]
    if spec.image_size is not None:
        config = config.with_overrides(image_size=spec.image_size)
    if getattr(spec, "threads", None):
        torch.set_num_threads(spec.threads)
    dtype = getattr(spec, "dtype", "float32")
    if dtype == "auto":
        dtype = default_dtype(dev)
    env = environment("cpu" if dev.type == "meta" else dev)
    if dev.type == "meta":
        env["device"] = "meta (counted, not run)"
    return RunContext(dev, dtype, name, config, code_version(), env)


class ModelCache:
    """Builds each variant once on the measuring device, so that points of different variants can
    alternate (a burst of load from other processes then hits neighbours alike). The three paper
    models together take about 2.2 GB in float32."""

    def __init__(self, config: ModelConfig, device: torch.device):
        self.config, self.device = config, device
        self.models: dict[str, NVSModel] = {}

    def get(self, name: str) -> NVSModel:
        if name not in self.models:
            torch.manual_seed(0)
            with torch.device(self.device):
                self.models[name] = build_model(name, self.config).eval().requires_grad_(False)
        return self.models[name]
