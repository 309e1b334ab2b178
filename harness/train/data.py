"""Batches for training (an endless, rank-sharded, resumable stream) and for validation (a fixed split)."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from .config import TrainData
from ..distributed import World


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


class CachedSource:
    """Memoizes the views of a source, so procedural views are rendered once per run instead of once
    per example drawn from them (training draws each scene many times); only drawn views are rendered."""

    def __init__(self, source):
        self.source = source
        self._views: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._notes: dict[int, list[str]] = {}  # per scene, e.g. a lens-distortion warning

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
            self._notes[i] = scene.notes
        images, c2w, k = (torch.stack(parts) for parts in zip(*(self._views[i, j] for j in indices)))
        return Scene(images, c2w, k, self.source.names[i], indices, notes=list(self._notes.get(i, [])))

    def __getitem__(self, i: int):
        return self.views(i, range(self.source.num_views(self.source._check_scene(i))))


def open_sources(spec: TrainData, cache: bool = True):
    """(training source, evaluation source); the evaluation one is opened with `eval_options` on top.
    Procedural sources are cached in memory (`cache`); on-disk ones are read as they are drawn."""
    from ..data import open_source
    from ..data.registry import source_options
    # A source that resizes frames does it by the data's protocol; procedural ones render at the size.
    protocol = {"protocol": spec.protocol} if "protocol" in source_options(spec.source) else {}
    train = open_source(spec.source, image_size=spec.image_size, **spec.options, **protocol)
    evaluation = open_source(spec.source, image_size=spec.image_size, **{**spec.options, **spec.eval_options}, **protocol)
    if cache and spec.source.startswith("synthetic"):
        train = CachedSource(train)
    return train, evaluation


def camera_centres(source, i: int) -> torch.Tensor:
    """Centres [v,3] of every camera of scene i; procedural sources give them without rendering."""
    n = source.num_views(i)
    if hasattr(source, "cameras"):
        return source.cameras(i, list(range(n)))[:, :3, 3]
    return source.views(i, range(n)).c2w[:, :3, 3]


def nearby_views(source, i: int, n_input: int, n_target: int, pool: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Context and target views drawn from the `pool` cameras closest to a random anchor view (the
    anchor is a context view), so every target has a context camera near it: a context span for
    unordered (object-style) views."""
    centres = camera_centres(source, i).double()
    anchor = int(rng.integers(len(centres)))
    order = torch.argsort((centres - centres[anchor]).norm(dim=-1), stable=True).tolist()
    near = order[1:max(pool, n_input + n_target)]
    picks = rng.permutation(len(near))[:n_input + n_target - 1].tolist()
    chosen = [anchor] + [near[p] for p in picks]
    return sorted(chosen[:n_input]), chosen[n_input:]


def ring_views(source, i: int, n_input: int, n_target: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Context views spread evenly in azimuth around the object (the camera nearest each of n_input
    angles 360/n_input degrees apart, at a random phase), targets drawn at random from the other
    views: every surface a target sees was seen by some context view, yet no target is a context view."""
    centres = camera_centres(source, i).double()
    if len(centres) < n_input + n_target:
        raise ValueError(f"scene {i}: context_layout ring needs {n_input + n_target} views, the source has {len(centres)}")
    azimuth = torch.atan2(centres[:, 0], centres[:, 2])
    phase = rng.uniform(0, 2 * np.pi)
    context: list[int] = []
    for k in range(n_input):
        gap = torch.remainder(azimuth - (phase + 2 * np.pi * k / n_input) + np.pi, 2 * np.pi) - np.pi
        gap[context] = float("inf")
        context.append(int(gap.abs().argmin()))
    rest = [j for j in range(len(centres)) if j not in context]
    target = [rest[p] for p in rng.permutation(len(rest))[:n_target].tolist()]
    return sorted(context), target


def pick_views(source, i: int, spec: TrainData, n_input: int, n_target: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Context and target views of scene i by the spec's own rule (ring or nearby_views)."""
    if spec.context_layout == "ring":
        return ring_views(source, i, n_input, n_target, rng)
    return nearby_views(source, i, n_input, n_target, spec.nearby_views, rng)


def example_stream(source, spec: TrainData) -> Iterator:
    """The data module's training stream, or (with `nearby_views` or the ring layout) the same stream
    drawing views by that rule: scene uniformly at random, views by `pick_views`."""
    from ..data import make_example, training_examples
    if not spec.nearby_views and spec.context_layout == "source":
        yield from training_examples(source, n_input=spec.n_input, n_target=spec.n_target, seed=spec.seed,
                                     normalize=spec.normalize)
        return
    rng = np.random.default_rng(spec.seed)
    while True:
        i = int(rng.integers(len(source)))
        context, target = pick_views(source, i, spec, spec.n_input, spec.n_target, rng)
        # Curriculum: some targets are context views themselves, so routing colour along matching
        # rays is rewarded from the first steps (validation never does this).
        copies = rng.random(len(target)) < spec.context_target_rate
        target = [int(rng.choice(context)) if copy else t for t, copy in zip(target, copies)]
        yield make_example(source, i, context, target, spec.normalize)


def evaluation_index(source, spec: TrainData) -> dict:
    """The fixed validation index (RealEstate10K index format), drawn by the same view rule as training."""
    from ..data import make_evaluation_index
    n_input = spec.eval_n_input or spec.n_input
    if not spec.nearby_views and spec.context_layout == "source":
        return make_evaluation_index(source, n_input=n_input, n_target=spec.eval_n_target, seed=spec.seed)
    index = {}
    for i, name in enumerate(source.names):
        context, target = pick_views(source, i, spec, n_input, spec.eval_n_target, np.random.default_rng([spec.seed, i]))
        index[name] = {"context": context, "target": target}
    return index


def training_batches(source, spec: TrainData, world: World, batch_size: int, examples_seen: int = 0) -> Iterator[dict[str, Any]]:
    """Rank r takes positions r, r+W, r+2W ... of one global example stream, so W ranks with batch B
    see exactly the examples one process with batch W*B would. `examples_seen` (global) skips what a
    resumed run has already trained on."""
    from ..data import collate
    stream = itertools.islice(example_stream(source, spec), examples_seen + world.rank, None, world.size)
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


def validation_index(source, spec: TrainData) -> dict:
    """The scenes and views every validation of a study scores: its first `eval_scenes` entries."""
    return dict(itertools.islice(evaluation_index(source, spec).items(), spec.eval_scenes))


def evaluation_split(source, spec: TrainData, batch_size: int) -> EvalSplit:
    from ..data import collate, evaluation_examples
    index = validation_index(source, spec)
    examples = list(itertools.islice(evaluation_examples(source, index, normalize=spec.normalize), spec.eval_scenes))
    if not examples:
        raise ValueError(f"data.source {spec.source!r}: the evaluation split is empty")
    batches = [collate(examples[i:i + batch_size]) for i in range(0, len(examples), batch_size)]
    return EvalSplit(batches, len(examples))
