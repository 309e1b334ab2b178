"""The entry of kind `evaluate`: the command line's `--checkpoint` and `--preset` applied to the
experiment, then the evaluation run (a missing data set or checkpoint is one line, nothing written)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from models import list_models

from ..checkpoint import is_our_checkpoint, read_torch_file
from ..errors import CheckpointError, ConfigError, MissingResource
from ..schema import Kind, RunOptions, revalidate
from ..weights import shipped_entry
from .inputs import expand
from .scoring import Evaluation, EvaluationResult
from .spec import EvaluateSpec

log = logging.getLogger(__name__)


def with_checkpoints(checkpoints: tuple[str, ...]) -> list[dict[str, Any]] | None:
    """`[MODEL=]PATH` items replace the experiment's model list (our checkpoints name their model;
    official ones need MODEL=)."""
    if not checkpoints:
        return None
    models = []
    for item in checkpoints:
        name, _, path = item.rpartition("=") if "=" in item else ("", "", item)
        path = expand(path)
        if not Path(path).is_file():
            raise MissingResource(f"--checkpoint {item}: file {path} not found")
        if name and name not in list_models():
            raise ConfigError(f"--checkpoint {item}: unknown model {name!r}; registered: {', '.join(list_models())}")
        models.append({"name": name or _checkpoint_model(path, item), "checkpoint": path})
    return models


def _checkpoint_model(path: str, item: str) -> str:
    """The variant one of our checkpoints or shipped weights holds (official files do not say: they need MODEL=)."""
    shipped = shipped_entry(path)
    if shipped is not None:
        return shipped["variant"]
    obj = read_torch_file(Path(path))
    if not is_our_checkpoint(obj):
        raise CheckpointError(f"--checkpoint {item}: not an lvsm-bench checkpoint; for an official one write MODEL={path}")
    return obj["model"]


def run_evaluation(spec: EvaluateSpec, options: RunOptions) -> EvaluationResult | None:
    models = with_checkpoints(options.checkpoints)
    if models is not None:
        spec = revalidate(spec, models=models)
    try:
        evaluation = Evaluation(spec, progress=options.progress, from_records=options.from_records)
    except MissingResource as missing:
        # Nothing asked for was done: one line naming what is missing and how to provide it, exit status 2.
        error = MissingResource(f"{spec.name}: not run: {missing}")
        error.every_rank = True  # every rank finds the same thing missing; one says so
        raise error from None
    result = evaluation.run()
    if result is not None:
        log.info("%s: %d scene evaluations computed, %d failed, the rest resumed from %s", spec.name, result.computed,
                 result.failed, evaluation.sweep.store.path)
    return result


EVALUATE = Kind(EvaluateSpec, run_evaluation, "PSNR / SSIM / LPIPS of models or checkpoints on an evaluation index",
                reads=frozenset({"checkpoints", "from_records"}))
