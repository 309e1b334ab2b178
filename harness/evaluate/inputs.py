"""What an evaluation reads: the data source with its evaluation index, and the models (a registered
variant at a preset with fresh weights, or a checkpoint), each with the identity its rows are keyed by."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models import build_model

from ..checkpoint import load_checkpoint
from ..errors import ConfigError, MissingResource
from ..runtime import autocast
from ..schema import ModelRef, missing_path
from ..weights import load_shipped, shipped_entry
from .spec import EvalData

RANDOM_INIT = "random-init"


# ------------------------------------------------------------------------------------------ data


def expand(value: Any) -> Any:
    return os.path.expandvars(value) if isinstance(value, str) else value


def _check_path(key: str, raw: str, spec: EvalData) -> str:
    reason = missing_path(key, raw)
    if reason:
        raise MissingResource(reason + (f". {' '.join(spec.requires.split())}" if spec.requires else ""))
    return expand(raw)


def repository_path(path: str | Path) -> str:
    """A file inside this repository by its path from the repository's root, so that every clone names it
    alike (a point's identity must not depend on where the clone is); elsewhere its absolute path."""
    from ..provenance import REPO_ROOT
    resolved = Path(path).resolve()
    return resolved.relative_to(REPO_ROOT).as_posix() if resolved.is_relative_to(REPO_ROOT) else str(resolved)


def same_index_content(point: dict[str, Any]) -> dict[str, Any]:
    """A point (or row) whose evaluation index is identified by its content alone: rows recorded in another
    clone, or before index files were named from the repository's root, still match."""
    index = (point.get("data") or {}).get("index")
    if not isinstance(index, dict) or "sha1" not in index:
        return point
    return {**point, "data": {**point["data"], "index": {"sha1": index["sha1"]}}}


def _file_sha1(path: str | Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _file_identity(path: str | Path) -> str:
    """Cheap identity of a (possibly huge) checkpoint: a changed file is evaluated again."""
    stat = Path(path).stat()
    return hashlib.sha1(f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


@dataclass
class ResolvedData:
    source: Any
    index: dict[str, dict[str, list[int]]]  # present scenes only, limited to max_scenes
    identity: dict[str, Any]  # what the resume key pins about the data
    not_in_source: int  # indexed scenes the source lacks (a partial download)


def resolve_data(spec: EvalData) -> ResolvedData:
    """Open the source and the evaluation index."""
    from ..data import load_evaluation_index, make_evaluation_index, open_source
    from ..data.registry import source_options
    options = {}
    for key, value in spec.options.items():
        raw_is_path = isinstance(value, str) and ("$" in value or key in ("root", "path"))
        options[key] = _check_path(f"data.options.{key}", value, spec) if raw_is_path else expand(value)
    if "protocol" in options:
        raise ConfigError(f"data.options.protocol: name the protocol as data.protocol (got {options['protocol']!r})")
    if "protocol" in source_options(spec.source):  # a source that resizes frames: the protocol is part of its data
        options["protocol"] = spec.protocol
    source = open_source(spec.source, **options)
    if spec.index:
        index_path = _check_path("data.index", spec.index, spec)
        index = load_evaluation_index(index_path)
        index_id = {"file": repository_path(index_path), "sha1": _file_sha1(index_path)}
    else:
        index = make_evaluation_index(source, n_input=spec.n_input, n_target=spec.n_target, seed=spec.seed)
        index_id = {"drawn": {"n_input": spec.n_input, "n_target": spec.n_target, "seed": spec.seed}}
    index = {k: v for k, v in index.items() if v}
    # A partial download evaluates the scenes it has; the notes say how many the index named.
    missing = [k for k in index if source.index_of(k) is None]
    index = {k: v for k, v in index.items() if source.index_of(k) is not None}
    if spec.max_scenes:
        index = dict(list(index.items())[:spec.max_scenes])
    if not index:
        raise ConfigError(f"data: the evaluation index selects no scenes of source {spec.source!r}"
                          + (f" ({len(missing)} indexed scenes are not in it, e.g. {missing[0]!r})" if missing else ""))
    identity = {"source": spec.source, "options": options, "index": index_id, "normalize": spec.normalize}
    return ResolvedData(source, index, identity, len(missing))


# ---------------------------------------------------------------------------------------- models


@dataclass
class LoadedModel:
    label: str
    model: torch.nn.Module
    info: dict[str, Any]  # table/record columns: model, variant, preset, weights, checkpoint
    identity: dict[str, Any]  # what the resume key pins


def load_model(spec: ModelRef, label: str, device: torch.device, seed: int) -> LoadedModel:
    if spec.checkpoint:
        path = expand(spec.checkpoint)
        shipped = shipped_entry(path)
        if shipped is not None:  # weights committed with the repository: pinned by their checksum
            model, meta = load_shipped(path, model_name=spec.name, device=device)
            identity = {"weights_sha256": shipped["sha256"]}
        else:
            model, meta = load_checkpoint(path, model_name=spec.name, device=device)
            identity = {"checkpoint": _file_identity(path)}
        weights, preset, checkpoint = meta.weights_label, meta.preset or "from checkpoint", str(path)
    else:
        torch.manual_seed(seed)
        model = build_model(spec.name, spec.preset, **spec.overrides).to(device).eval()
        weights, preset, checkpoint = RANDOM_INIT, spec.preset, ""
        identity = {"random_init_seed": seed, "preset": spec.preset, **({"overrides": spec.overrides} if spec.overrides else {})}
    info = {"model": label, "variant": spec.name, "preset": preset, "weights": weights, "checkpoint": checkpoint,
            "size": f"{model.num_parameters() / 1e6:.2f} M parameters; {model.config.describe()}"}
    numerics = model.numerics(device)  # e.g. which kernel LaCT's bfloat16 step ran on: it changes the scores
    if numerics:
        info["numerics"] = identity["numerics"] = numerics
    return LoadedModel(label, model, info, {"model": label, "variant": spec.name, **identity})


def render(model: torch.nn.Module, batch: dict[str, Any], device: torch.device, dtype: str) -> torch.Tensor:
    # Pinned host tensors (the loader pins them on CUDA) are copied while the host goes on.
    args = [batch[k].to(device, non_blocking=True)
            for k in ("input_images", "input_c2w", "input_fxfycxcy", "target_c2w", "target_fxfycxcy")]
    with torch.no_grad(), autocast(device, dtype):
        return model(*args).float()

