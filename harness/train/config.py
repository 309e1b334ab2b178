"""What a training run is described by: the `train` and `convergence` experiment kinds' YAML keys."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from ..schema import (DataRef, ExperimentBase, ModelName, ModelRef, NonNegative, Positive, PositiveFloat, PresetName, SourceName,
                      Spec)


class TrainData(DataRef):
    """Where training examples come from. `options` go to `harness.data.open_source` (count, seed,
    root ...); the evaluation split is the same source opened with `eval_options` layered on top
    (another seed or count, or a test root), so training and evaluation scenes are disjoint."""
    source: SourceName = "synthetic_object"
    image_size: Positive = 32
    eval_options: dict[str, Any] = {"seed": 1}
    n_target: Positive = 4
    eval_n_input: Positive | None = None
    eval_n_target: Positive = 3
    eval_scenes: Positive = 32
    # 0: the source's own view rule; k > 0: context and targets among the k cameras nearest a random
    # anchor view (a context span for unordered object views; see harness.train.data.nearby_views).
    nearby_views: NonNegative = 0
    # With nearby_views: probability that a training target is one of the example's context views.
    context_target_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    # "source": the source's own view rule (or nearby_views); "ring": the context views spread evenly in
    # azimuth around the object, targets drawn from the other views, so every visible surface was seen
    # by some context view (see harness.train.data.ring_views).
    context_layout: Literal["source", "ring"] = "source"

    @model_validator(mode="after")
    def _one_view_rule(self) -> "TrainData":
        if self.context_layout == "ring" and self.nearby_views:
            raise ValueError(f"context_layout ring and nearby_views {self.nearby_views} both pick the views: "
                             "set nearby_views to 0")
        return self


class OptimSpec(Spec):
    lr: PositiveFloat = 1e-3
    betas: list[float] = Field(default=[0.9, 0.95], min_length=2, max_length=2)
    weight_decay: float = Field(default=0.05, ge=0)
    warmup_steps: NonNegative = 50
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    grad_clip: float = Field(default=1.0, ge=0)


class RepaSpec(Spec):
    """REPA (training only; see harness.train.repa): align the hidden states of `layers` (0-based blocks of
    the target stream; [] = the block at a third of the depth) with a frozen teacher's patch features of
    the target images. `teacher`: "module:attr" or "path/to/file.py:attr", a no-argument constructor;
    `weights`: its state dict file (never downloaded: without it the run stops)."""
    teacher: str = Field(pattern=r"^.+:[A-Za-z_][A-Za-z0-9_]*$")
    weights: str = Field(min_length=1)
    layers: list[int] = []
    weight: PositiveFloat = 0.5
    projector_hidden: Positive = 256
    teacher_dim: Positive | None = None


class TrainSpec(Spec):
    steps: Positive = 1000
    batch_size: Positive = 8
    seed: int = 0
    perceptual_weight: float = Field(default=0.0, ge=0)
    gradient_checkpointing: bool = False
    val_every: Positive = 100
    checkpoint_every: Positive = 200
    log_every: Positive = 10
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    threads: Positive | None = 2
    repa: RepaSpec | None = None  # adds weight * REPA loss to the reconstruction loss


class TrainExperiment(ExperimentBase):
    """kind: train -- one model, one run, resumable from its checkpoint."""
    kind: Literal["train"]
    model: ModelRef
    data: TrainData = TrainData()
    optim: OptimSpec = OptimSpec()
    train: TrainSpec = TrainSpec()

    def preset_device(self) -> str:
        return self.train.device


def _released() -> list[str]:
    from models import released_models
    return released_models()


class Arm(Spec):
    """One trained configuration of a study: a registered variant with config overrides (on top of the
    study's) and TrainSpec fields it changes (e.g. `repa`), with what a paper reports for it."""
    name: str = Field(pattern=r"^[A-Za-z0-9_.+-]+$")
    model: ModelName
    overrides: dict[str, Any] = {}
    train: dict[str, Any] = {}
    description: str = ""
    published_psnr: float | None = None  # an absolute number the paper reports for this configuration
    published_diff_db: float | str | None = None  # the difference to the reference arm the paper reports
    published_source: str = ""
    reference: str = ""  # the arm this one is compared with (default: the study's `reference`)


class CostPoint(Spec):
    """Where each arm's inference cost is measured: N inputs, M targets, at its trained size."""
    n_input: Positive = 2
    n_target: Positive = 1
    runs: Positive = 10
    threads: Positive = 1


class SpeedupClaim(Spec):
    """A paper's claim that one arm converges some factor faster than another, set beside ours."""
    arm: str
    over: str
    factor: PositiveFloat
    source: str


class ConvergenceExperiment(ExperimentBase):
    """kind: convergence -- the models compared (arms), each trained on the same data with the same step
    budget and batch, with one or more initialisation seeds. An entry of `models` is a registered variant
    (the arm takes its name), or an arm: a name of its own, the variant, config overrides and training
    options."""
    kind: Literal["convergence"]
    models: list[ModelName | Arm] = Field(default_factory=_released, min_length=1)
    seeds: list[NonNegative] = []  # model-initialisation seeds; empty: train.seed alone
    reference: str = ""  # the arm every other is compared with
    preset: PresetName = "tiny"
    overrides: dict[str, Any] = {}
    # Fields of one variant's own config (its depths ...), applied to its arms only.
    variant_overrides: dict[ModelName, dict[str, Any]] = {}
    data: TrainData = TrainData()
    optim: OptimSpec = OptimSpec()
    train: TrainSpec = TrainSpec()
    reach_psnr: list[float] = []
    blur_sigmas: list[PositiveFloat] = [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    cost: CostPoint = CostPoint()
    # Rounds of the clean cost of a training step: every arm's step timed in turn on one batch after training.
    step_cost_rounds: Positive = 10
    speedup_claim: SpeedupClaim | None = None
    scale_note: str = ""  # how this study's scale differs from the paper's, printed beside published numbers
    # A folder the trained weights (each arm's first seed) are shipped to once every run has finished
    # (harness/weights.py): what `make eval` and `make view-generalization` evaluate in a fresh clone.
    ship_weights: str = ""
    # float32 reproduces the study's numbers exactly; bfloat16 halves the files but rounds the weights.
    ship_dtype: Literal["float32", "bfloat16"] = "float32"

    @model_validator(mode="after")
    def _arms_build(self) -> "ConvergenceExperiment":
        names = [arm.name for arm in self.study_arms()]
        if len(set(names)) != len(names):
            raise ValueError(f"models: arm names must be distinct, got {names}")
        for where, reference in [("reference", self.reference), *((f"models.{arm.name}.reference", arm.reference)
                                                                  for arm in self.study_arms())]:
            if reference and reference not in names:
                raise ValueError(f"{where}: {reference!r} is not an arm; arms: {', '.join(names)}")
        for arm in self.study_arms():
            try:
                self.model_spec(arm)
                self.train_spec(arm, self.run_seeds()[0])
            except ValidationError as error:
                problem = error.errors()[0]
                where = ".".join(str(p) for p in problem["loc"])
                raise ValueError(f"arm {arm.name}: {where + ': ' if where else ''}"
                                 f"{problem['msg'].removeprefix('Value error, ')}") from None
        return self

    def preset_device(self) -> str:
        return self.train.device

    def study_arms(self) -> list[Arm]:
        return [entry if isinstance(entry, Arm) else Arm(name=entry, model=entry) for entry in self.models]

    def run_seeds(self) -> list[int]:
        return self.seeds or [self.train.seed]

    def run_dir(self, arm: str, seed: int) -> Path:
        """Where a run trains: runs/<arm> when seeds are not given, runs/<arm>/seed<k> when they are (so
        that runs of one seed at a time land where the run of all seeds looks for them)."""
        return self.results_dir() / "runs" / arm / (f"seed{seed}" if self.seeds else "")

    def trained_weights(self, arm: str) -> Path:
        """The trained weights of an arm's first seed: the shipped file when the study ships its weights,
        else the run's checkpoint."""
        if self.ship_weights:
            return Path(self.ship_weights) / f"{arm}.pt"
        return self.run_dir(arm, self.run_seeds()[0]) / "checkpoint.pt"

    def arm(self, arm: Arm | str) -> Arm:
        """An arm, or the arm of that name."""
        return arm if isinstance(arm, Arm) else next(a for a in self.study_arms() if a.name == arm)

    def model_spec(self, arm: Arm | str) -> ModelRef:
        arm = self.arm(arm)
        overrides = {**self.overrides, **self.variant_overrides.get(arm.model, {}), **arm.overrides}
        return ModelRef(name=arm.model, preset=self.preset, overrides=overrides)

    def train_spec(self, arm: Arm | str, seed: int) -> TrainSpec:
        arm = self.arm(arm)
        return TrainSpec.model_validate({**self.train.model_dump(), **arm.train, "seed": seed})


def settings_dict(model: ModelRef, data: TrainData, optim: OptimSpec, train: TrainSpec) -> dict[str, Any]:
    """Everything that decides a run's result, by section; a checkpoint written with other settings is refused."""
    return {"model": model.model_dump(), "data": data.model_dump(), "optim": optim.model_dump(), "train": train.model_dump()}


def settings_defaults(model: ModelRef, data: TrainData, optim: OptimSpec, train: TrainSpec) -> dict[str, Any]:
    """The default of every option in `settings_dict`'s sections (options without one are left out)."""
    return {section: {name: field.get_default(call_default_factory=True) for name, field in type(spec).model_fields.items()
                      if not field.is_required()}
            for section, spec in (("model", model), ("data", data), ("optim", optim), ("train", train))}
