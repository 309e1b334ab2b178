"""Batches for training (an endless, rank-sharded, resumable stream) and for validation (a fixed split)."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from .config import DataSpec
from .distributed import World

TENSOR_KEYS = ("input_images", "input_c2w", "input_fxfycxcy", "target_images", "target_c2w", "target_fxfycxcy")


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


class CachedSource:
    """Memoizes the views of a source, so procedural views are rendered once per run instead of once
    per example drawn from them (training draws each scene many times); only drawn views are rendered."""

    def __init__(self, source):
        self.source = source
        self._views: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def __getattr__(self, name: str):
        return getattr(self.source, name)

    def __len__(self) -> int:
        return len(self.source)

    def views(self, i: int, indices):
        from ..data import Scene
        i = self.source._check_scene(i)
        indices = [int(j) for j in indices]
        missing = sorted({j for j in indices if (i, j) not in self._views})
        if missing:
            scene = self.source.views(i, missing)  # the source checks the indices and raises its own errors
            for k, j in enumerate(missing):
                self._views[i, j] = (scene.images[k], scene.c2w[k], scene.fxfycxcy[k])
        images, c2w, k = (torch.stack(parts) for parts in zip(*(self._views[i, j] for j in indices)))
        return Scene(images, c2w, k, self.source.names[i], indices)

    def __getitem__(self, i: int):
        return self.views(i, range(self.source.num_views(self.source._check_scene(i))))


def open_sources(spec: DataSpec, cache: bool = True):
    """(training source, evaluation source); the evaluation one is opened with `eval_options` on top.
    Procedural sources are cached in memory (`cache`); on-disk ones are read as they are drawn."""
    from ..data import open_source
    train = open_source(spec.source, image_size=spec.image_size, **spec.options)
    evaluation = open_source(spec.source, image_size=spec.image_size, **{**spec.options, **spec.eval_options})
    if cache and spec.source.startswith("synthetic"):
        train = CachedSource(train)
    return train, evaluation


def training_batches(source, spec: DataSpec, world: World, batch_size: int, examples_seen: int = 0) -> Iterator[dict[str, Any]]:
    """Rank r takes positions r, r+W, r+2W ... of one global example stream, so W ranks with batch B
    see exactly the examples one process with batch W*B would. `examples_seen` (global) skips what a
    resumed run has already trained on."""
    from ..data import collate, training_examples
    stream = training_examples(source, n_input=spec.n_input, n_target=spec.n_target, seed=spec.seed,
                               normalize=spec.normalize)
    stream = itertools.islice(stream, examples_seen + world.rank, None, world.size)
    while True:
        examples = list(itertools.islice(stream, batch_size))
        if len(examples) < batch_size:
            return
        yield collate(examples)


@dataclass
class EvalSplit:
    """The fixed validation split, collated once: a list of batches plus the scene of every example."""
    batches: list[dict[str, Any]]
    n_examples: int


def evaluation_split(source, spec: DataSpec, batch_size: int) -> EvalSplit:
    from ..data import collate, evaluation_examples, make_evaluation_index
    index = make_evaluation_index(source, n_input=spec.eval_n_input or spec.n_input, n_target=spec.eval_n_target,
                                  seed=spec.seed)
    examples = list(itertools.islice(evaluation_examples(source, index, normalize=spec.normalize), spec.eval_scenes))
    if not examples:
        raise ValueError(f"data.source {spec.source!r}: the evaluation split is empty")
    batches = [collate(examples[i:i + batch_size]) for i in range(0, len(examples), batch_size)]
    return EvalSplit(batches, len(examples))
