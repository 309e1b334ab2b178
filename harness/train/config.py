"""What a training run is described by: the `train` and `convergence` experiment kinds' YAML keys."""
from __future__ import annotations

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


class TrainExperiment(ExperimentBase):
    """kind: train -- one model, one run, resumable from its checkpoint."""
    kind: Literal["train"]
    model: ModelRef = ModelRef(name="lvsm_decoder_only", preset="tiny")
    data: TrainData = TrainData()
    optim: OptimSpec = OptimSpec()
    train: TrainSpec = TrainSpec()


def _released() -> list[str]:
    from models import list_models, model_card
    return [name for name in list_models() if model_card(name).official_params]


class ConvergenceExperiment(ExperimentBase):
    """kind: convergence -- several variants, same preset, data, step budget and batch."""
    kind: Literal["convergence"]
    variants: list[ModelName] = Field(default_factory=_released, min_length=1)
    preset: PresetName = "tiny"
    overrides: dict[str, Any] = {}
    # Per-variant config fields (each variant reads its own depth fields: `depth`, `encoder_depth` ...).
    variant_overrides: dict[ModelName, dict[str, Any]] = {}
    data: TrainData = TrainData()
    optim: OptimSpec = OptimSpec()
    train: TrainSpec = TrainSpec()
    reach_psnr: list[float] = []
    blur_sigmas: list[PositiveFloat] = [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]

    @model_validator(mode="after")
    def _variants_build(self) -> "ConvergenceExperiment":
        for name in self.variants:
            try:
                self.model_spec(name)
            except ValidationError as error:
                raise ValueError(f"variant {name}: {error.errors()[0]['msg'].removeprefix('Value error, ')}") from None
        return self

    def model_spec(self, variant: str) -> ModelRef:
        return ModelRef(name=variant, preset=self.preset, overrides={**self.overrides, **self.variant_overrides.get(variant, {})})


def settings_dict(model: ModelRef, data: TrainData, optim: OptimSpec, train: TrainSpec) -> dict[str, Any]:
    """Everything that decides a run's result, by section; a checkpoint written with other settings is refused."""
    return {"model": model.model_dump(), "data": data.model_dump(), "optim": optim.model_dump(), "train": train.model_dump()}
