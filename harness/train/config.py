"""The dataclasses a training run is described by; experiment YAMLs are loaded into them."""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..experiment import Experiment, ExperimentError, check_choice, check_models


@dataclass
class ModelSpec:
    """A registered variant at a preset, with config overrides (e.g. `depth`, `dim`, `patch_size`)."""
    name: str = "lvsm_decoder_only"
    preset: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSpec:
    """Where examples come from. `options` go to `harness.data.open_source` (count, seed, root ...);
    the evaluation split is the same source opened with `eval_options` layered on top (another seed
    or count, or a test root), so training and evaluation scenes are disjoint."""
    source: str = "synthetic_object"
    image_size: int = 32
    options: dict[str, Any] = field(default_factory=dict)
    eval_options: dict[str, Any] = field(default_factory=lambda: {"seed": 1})
    n_input: int = 2
    n_target: int = 4
    eval_n_input: int | None = None
    eval_n_target: int = 3
    eval_scenes: int = 32
    normalize: bool = True
    # 0: the source's own view rule; k > 0: context and targets among the k cameras nearest a random
    # anchor view (a context span for unordered object views; see harness.train.data.nearby_views).
    nearby_views: int = 0
    # With nearby_views: probability that a training target is one of the example's context views.
    context_target_rate: float = 0.0
    # "source": the source's own view rule (or nearby_views); "ring": the context views spread evenly in
    # azimuth around the object, targets drawn from the other views, so every visible surface was seen
    # by some context view (see harness.train.data.ring_views).
    context_layout: Literal["source", "ring"] = "source"
    seed: int = 0


@dataclass
class OptimSpec:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.05
    warmup_steps: int = 50
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0


@dataclass
class TrainSpec:
    steps: int = 1000
    batch_size: int = 8
    seed: int = 0
    perceptual_weight: float = 0.0
    gradient_checkpointing: bool = False
    val_every: int = 100
    checkpoint_every: int = 200
    log_every: int = 10
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    threads: int | None = 2


@dataclass
class TrainExperiment(Experiment):
    """kind: train -- one model, one run, resumable from its checkpoint."""
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    train: TrainSpec = field(default_factory=TrainSpec)

    def __post_init__(self) -> None:
        with _in_file():
            validate_run(self.model, self.data, self.optim, self.train, "model")


@dataclass
class ConvergenceExperiment(Experiment):
    """kind: convergence -- several variants, same preset, data, step budget and batch."""
    variants: list[str] = field(default_factory=lambda: ["lvsm_decoder_only", "lvsm_encoder_decoder", "efficient_lvsm"])
    preset: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    # Per-variant config fields (each variant reads its own depth fields: `depth`, `encoder_depth` ...).
    variant_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    data: DataSpec = field(default_factory=DataSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    reach_psnr: list[float] = field(default_factory=list)
    blur_sigmas: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])

    def __post_init__(self) -> None:
        with _in_file():
            check_models(self.variants, "variants")
            check_models(list(self.variant_overrides), "variant_overrides")
            for name in self.variants:
                validate_run(self.model_spec(name), self.data, self.optim, self.train, f"variant {name}")

    def model_spec(self, variant: str) -> ModelSpec:
        return ModelSpec(variant, self.preset, {**self.overrides, **self.variant_overrides.get(variant, {})})


@contextlib.contextmanager
def _in_file():
    """The YAML loader prefixes the file name to ValueErrors raised while building the dataclass."""
    try:
        yield
    except ExperimentError as error:
        raise ValueError(str(error)) from None


def validate_run(model: ModelSpec, data: DataSpec, optim: OptimSpec, train: TrainSpec, where: str) -> None:
    """Checks that need more than a type: registry names, model config keys, value ranges."""
    from models import preset as named_preset
    from models.registry import resolve_config

    from models import PRESETS
    check_models([model.name], f"{where}: model.name")
    check_choice(model.preset, sorted(PRESETS), f"{where}: preset")
    from ..data import list_sources
    check_choice(data.source, list_sources(), f"{where}: data.source")
    try:
        resolve_config(named_preset(model.preset), **model.overrides)
    except (KeyError, TypeError, ValueError) as error:
        message = error.args[0] if error.args else str(error)
        raise ExperimentError(f"{where}: model overrides: {message}") from None
    if len(optim.betas) != 2:
        raise ExperimentError(f"{where}: optim.betas: expected two numbers, got {optim.betas!r}")
    positive = {"train.steps": train.steps, "train.batch_size": train.batch_size, "train.val_every": train.val_every,
                "train.checkpoint_every": train.checkpoint_every, "train.log_every": train.log_every,
                "data.image_size": data.image_size, "data.n_input": data.n_input, "data.n_target": data.n_target,
                "data.eval_n_target": data.eval_n_target, "data.eval_scenes": data.eval_scenes, "optim.lr": optim.lr}
    if not 0.0 <= data.context_target_rate <= 1.0:
        raise ExperimentError(f"{where}: data.context_target_rate: expected a probability in [0, 1], got {data.context_target_rate}")
    check_choice(data.context_layout, ["ring", "source"], f"{where}: data.context_layout")
    if data.context_layout == "ring" and data.nearby_views:
        raise ExperimentError(f"{where}: data.context_layout ring and data.nearby_views {data.nearby_views} both pick "
                              "the views: set nearby_views to 0")
    if data.nearby_views < 0:
        raise ExperimentError(f"{where}: data.nearby_views: expected 0 (off) or a positive count, got {data.nearby_views}")
    for key, value in positive.items():
        if value <= 0:
            raise ExperimentError(f"{where}: {key}: expected a positive number, got {value!r}")
    if optim.warmup_steps < 0 or train.perceptual_weight < 0 or optim.grad_clip < 0:
        raise ExperimentError(f"{where}: optim.warmup_steps, optim.grad_clip and train.perceptual_weight must be >= 0")


def settings_dict(*specs: Any) -> dict[str, Any]:
    return {type(s).__name__: asdict(s) for s in specs}
