"""What an `evaluate` experiment YAML may say: the models, the data and its evaluation index, the
metrics' settings and the published rows printed beside ours."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ..schema import DataRef, Dtype, ExperimentBase, ModelRef, NonNegative, Positive, Published, Spec, missing_path


class EvalData(DataRef):
    index: str = ""  # evaluation index JSON ($ENV_VARS allowed); empty: drawn by make_evaluation_index
    max_scenes: NonNegative = 0  # 0: every scene of the index, else its first N
    requires: str = ""  # what to tell the user when a path above is unset or missing
    num_workers: NonNegative = 0  # DataLoader worker processes reading the scenes (0: the evaluating process itself)


class QualityRow(Spec):
    """A published method's numbers (variants registered here take theirs from their card)."""
    model: str
    psnr: float
    ssim: float | None = None
    lpips: float | None = None
    source: str = ""


class EvaluateSpec(ExperimentBase):
    kind: Literal["evaluate"]
    models: list[ModelRef] = Field(min_length=1)
    data: EvalData = EvalData()
    lpips_net: Literal["vgg", "alex"] = "vgg"
    lpips_backbone: str = ""  # file or folder; empty: torchvision's cache $TORCH_HOME/hub/checkpoints/
    device: str = "auto"
    dtype: Dtype = "auto"  # auto: bfloat16 autocast on CUDA, float32 on CPU
    batch_size: Positive = 1  # scenes per forward pass
    seed: int = 0  # initialisation seed of random-init models
    grid_scenes: NonNegative = 3
    # The first K scenes each get a strip of renders (scenes/<scene>.png): the context views, the ground
    # truth of the first target and each model's render of it with its PSNR; every scene when fewer.
    scene_renders: NonNegative = 64
    card_table: str = ""  # the variants' card table printed beside ours (e.g. re10k)
    requires: str = ""  # how to provide a checkpoint that is not there (e.g. the make target that trains it)
    published: Published[QualityRow] | None = None

    def preset_device(self) -> str:
        return self.device

    def missing_resources(self) -> list[str]:
        data = self.data
        paths = [(f"data.options.{key}", value) for key, value in data.options.items()
                 if isinstance(value, str) and ("$" in value or key in ("root", "path"))]
        paths += [("data.index", data.index)] if data.index else []
        paths += [(f"models.{i}.checkpoint", m.checkpoint) for i, m in enumerate(self.models) if m.checkpoint]
        return [reason for key, raw in paths if (reason := missing_path(key, raw))]

    @model_validator(mode="after")
    def _distinct_labels(self) -> "EvaluateSpec":
        labels = [label_of(m, self.models) for m in self.models]
        duplicates = sorted({x for x in labels if labels.count(x) > 1})
        if duplicates:
            raise ValueError(f"models: label {duplicates[0]!r} used twice; give each a distinct 'label'")
        return self


def label_of(spec: ModelRef, all_specs: list[ModelRef]) -> str:
    if spec.label:
        return spec.label
    same_name = [s for s in all_specs if s.name == spec.name]
    if len(same_name) > 1 and spec.checkpoint:
        return f"{spec.name}@{Path(spec.checkpoint).stem}"
    return spec.name

