"""Cutting scenes into Examples: the training sampler (RealEstate10K-style context span with targets
between for video-like sources; random views for object-like ones) and the evaluation path driven by
an index in the RealEstate10K format `{scene: {"context": [...], "target": [...]} | null}`, used for
synthetic and real sources alike."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import DataError
from .geometry import normalize_poses
from .scene import Example
from .source import FAMILIES, Source

EvaluationIndex = dict[str, "dict[str, list[int]] | None"]


def _distinct(rng: np.random.Generator, pool: list[int], k: int) -> list[int]:
    """k items of `pool`, without repetition when the pool is large enough."""
    picks = rng.choice(len(pool), size=k, replace=len(pool) < k)
    return sorted(pool[p] for p in picks)


def span_views(rng: np.random.Generator, n_views: int, n_input: int, n_target: int, span: tuple[int, int]) -> tuple[list[int], list[int]]:
    """RealEstate10K-style: the first and last context frames are a span drawn from `span` apart (capped by
    the video length), further context frames lie between them, and targets are drawn from the frames
    between (from the whole span, context included, only when too few frames lie strictly between)."""
    lo, hi = span
    top = n_views - 1
    gap = int(rng.integers(min(lo, top), min(hi, top) + 1)) if top > 0 else 0
    start = int(rng.integers(0, n_views - gap))
    end = start + gap
    inner = list(range(start + 1, end))
    if n_input == 1:
        context = [start]
    else:
        context = sorted([start, end] + _distinct(rng, inner, n_input - 2)) if n_input > 2 else [start, end]
    between = [f for f in inner if f not in context]
    pool = between if len(between) >= n_target else list(range(start, end + 1))
    return context, _distinct(rng, pool, n_target)


def random_views(rng: np.random.Generator, n_views: int, n_input: int, n_target: int) -> tuple[list[int], list[int]]:
    """Object-style: distinct random views (repeated only when the scene has too few)."""
    picks = rng.choice(n_views, size=n_input + n_target, replace=n_views < n_input + n_target).tolist()
    return picks[:n_input], picks[n_input:]


def choose_views(src: Source, i: int, n_input: int, n_target: int, rng: np.random.Generator,
                 family: str | None = None) -> tuple[list[int], list[int]]:
    family = family or src.family
    if family not in FAMILIES:
        raise DataError(f"family {family!r} is unknown; expected one of {', '.join(FAMILIES)}")
    if n_input < 1 or n_target < 1:
        raise DataError(f"n_input and n_target must be >= 1, got {n_input} and {n_target}")
    n = src.num_views(i)
    if family == "object":
        return random_views(rng, n, n_input, n_target)
    return span_views(rng, n, n_input, n_target, tuple(src.span))


def make_example(src: Source, i: int, context: list[int], target: list[int], normalize: bool = True) -> Example:
    """Load the context and target views of scene i; with `normalize`, LVSM's scene normalization is
    computed over all of them together before they are split, as in the official loader."""
    scene = src.views(i, list(context) + list(target))
    c2w = normalize_poses(scene.c2w) if normalize else scene.c2w.to(torch.float32)
    n = len(context)
    return Example(scene.name, scene.images[:n], c2w[:n], scene.fxfycxcy[:n],
                   scene.images[n:], c2w[n:], scene.fxfycxcy[n:], list(context), list(target), list(scene.notes))


def training_examples(src: Source, n_input: int = 2, n_target: int = 6, seed: int = 0, normalize: bool = True,
                      family: str | None = None) -> Iterator[Example]:
    """Endless, deterministic stream of training Examples: scene uniformly at random, views by the
    source's family rule (override with `family`)."""
    rng = np.random.default_rng(seed)
    while True:
        i = int(rng.integers(len(src)))
        context, target = choose_views(src, i, n_input, n_target, rng, family)
        yield make_example(src, i, context, target, normalize)


class TrainingStream(torch.utils.data.IterableDataset):
    """`training_examples` as an IterableDataset for a DataLoader (batch with `collate_fn=collate`);
    each worker gets its own seed so workers never repeat each other."""

    def __init__(self, src: Source, n_input: int = 2, n_target: int = 6, seed: int = 0, normalize: bool = True):
        self.src, self.n_input, self.n_target, self.seed, self.normalize = src, n_input, n_target, seed, normalize

    def __iter__(self) -> Iterator[Example]:
        info = torch.utils.data.get_worker_info()
        seed = [self.seed, info.id] if info is not None else self.seed
        return training_examples(self.src, self.n_input, self.n_target, seed, self.normalize)


def make_evaluation_index(src: Source, n_input: int = 2, n_target: int = 3, seed: int = 0,
                          family: str | None = None) -> EvaluationIndex:
    """A fixed evaluation index for `src` in the RealEstate10K format, one entry per scene, each drawn
    from its own (seed, scene) stream so it does not depend on the scene count."""
    index: EvaluationIndex = {}
    for i, name in enumerate(src.names):
        context, target = choose_views(src, i, n_input, n_target, np.random.default_rng([seed, i]), family)
        index[name] = {"context": [int(c) for c in context], "target": [int(t) for t in target]}
    return index


def save_evaluation_index(index: EvaluationIndex, path: str | Path) -> None:
    from ..records import write_atomic
    write_atomic(path, json.dumps(index, indent=1) + "\n")


def _check_entry(entry: Any, where: str) -> dict[str, list[int]] | None:
    if entry is None:
        return None
    if not isinstance(entry, dict) or set(entry) != {"context", "target"}:
        raise DataError(f"{where}: expected null or an object with exactly the keys 'context' and 'target', got {entry!r}")
    for key in ("context", "target"):
        views = entry[key]
        if not isinstance(views, list) or not views or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in views):
            raise DataError(f"{where}: {key!r} must be a non-empty list of non-negative integers, got {views!r}")
    return {"context": list(entry["context"]), "target": list(entry["target"])}


def load_evaluation_index(path: str | Path) -> EvaluationIndex:
    """Read and validate an evaluation index file (pixelSplat's `evaluation_index_re10k.json` format)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"evaluation index {path}: file not found (expected a JSON object "
                        "{scene: {\"context\": [...], \"target\": [...]} | null})")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"evaluation index {path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise DataError(f"evaluation index {path}: expected a JSON object keyed by scene, got {type(data).__name__}")
    return {str(k): _check_entry(v, f"evaluation index {path}: scene {k!r}") for k, v in data.items()}


def evaluation_examples(src: Source, index: EvaluationIndex, normalize: bool = True, strict: bool = False,
                        skipped: list[str] | None = None) -> Iterator[Example]:
    """One Example per non-null index entry, in index order. Null entries are skipped (protocol). Scenes
    the source lacks are skipped with one warning that counts them (a partial download evaluates what it
    has), or raise with `strict`; their names are appended to `skipped` when given. A view index beyond a
    scene's length raises a DataError naming the scene."""
    missing: list[str] = []
    for name, entry in index.items():
        entry = _check_entry(entry, f"evaluation index: scene {name!r}")
        if entry is None:
            continue
        i = src.index_of(name)
        if i is None:
            if strict:
                raise DataError(f"evaluation index: scene {name!r} is not in source {src.source_name!r} "
                                f"({len(src)} scenes, e.g. {src.names[:2]})")
            missing.append(name)
            continue
        yield make_example(src, i, entry["context"], entry["target"], normalize)
    if skipped is not None:
        skipped.extend(missing)
    if missing:
        warnings.warn(f"evaluation index: {len(missing)} of {sum(e is not None for e in index.values())} scenes are "
                      f"not in source {src.source_name!r} and were skipped (first: {missing[0]!r})", stacklevel=2)
