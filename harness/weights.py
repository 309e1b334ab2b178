"""Shipped weights: trained models committed with the repository, so that a fresh clone evaluates at
once (`make eval`, `make view-generalization`) without training first.

A folder (e.g. weights/convergence/) holds one file per model, `<arm>.pt`, with the weights only
(a plain state dict, loadable with `torch.load(..., weights_only=True)`), and `manifest.json` naming
for each file its variant, full model config, training step, dtype and sha256. Loading checks the
checksum first: a damaged or replaced file is refused in one line, never evaluated. The folder is
written only on request (`--ship-weights`, as `make convergence` runs it) by the study that trained the
models (`ship_weights:` of a convergence experiment), run as its file defines it, from the checkpoints
of its runs; a file of another model config is replaced only when forced, and each replaced file's
checksum stays in its entry's `history`.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
from pathlib import Path
from typing import Any, Mapping

import torch

from models import build_model, model_config
from models.base import NVSModel
from models.official import load_checked

from .checkpoint import CheckpointMeta, load_checkpoint
from .errors import CheckpointError, MissingResource
from .records import write_atomic
from .runtime import DTYPES

MANIFEST = "manifest.json"
FORMAT = "lvsm-bench-shipped-weights-1"


def sha256(data: bytes | Path) -> str:
    digest = hashlib.sha256()
    if isinstance(data, Path):
        with open(data, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    else:
        digest.update(data)
    return digest.hexdigest()


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The folder's manifest, or None when the folder ships no weights."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable shipped-weights manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("models"), dict):
        raise CheckpointError(f"{path}: not a shipped-weights manifest (expected format {FORMAT!r} and a 'models' mapping)")
    return manifest


def shipped_entry(path: str | Path) -> dict[str, Any] | None:
    """The manifest entry of a shipped weights file, or None when `path` is not one (e.g. a checkpoint)."""
    path = Path(path)
    manifest = read_manifest(path.parent)
    return None if manifest is None else manifest["models"].get(path.name)


def load_shipped(path: str | Path, model_name: str | None = None, device: torch.device | str = "cpu"
                 ) -> tuple[NVSModel, CheckpointMeta]:
    """`(model, meta)` of a shipped weights file, after its checksum matched the manifest's."""
    path = Path(path)
    entry = shipped_entry(path)
    if entry is None:
        raise MissingResource(f"{path}: not listed in {path.parent / MANIFEST}; expected shipped weights")
    if not path.is_file():
        raise MissingResource(f"{path}: shipped weights file not found (listed in {path.parent / MANIFEST}); "
                              "restore it with `git checkout -- weights/` or retrain the study that ships it")
    actual = sha256(path)
    if actual != entry["sha256"]:
        raise CheckpointError(f"{path}: sha256 {actual[:12]}... does not match {entry['sha256'][:12]}... in "
                              f"{path.parent / MANIFEST}; the file is damaged or was replaced: restore it with "
                              "`git checkout -- weights/` or retrain the study that ships it")
    if model_name and model_name != entry["variant"]:
        raise CheckpointError(f"{path}: holds model {entry['variant']!r}, but {model_name!r} was asked for")
    with torch.device("meta"):
        model = build_model(entry["variant"], entry["config"])
    model = model.to_empty(device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    load_checked(model, {k: v.float() for k, v in state.items()})
    meta = CheckpointMeta(model=entry["variant"], config=entry["config"], step=int(entry["step"]), source="ours",
                          path=str(path), preset=entry.get("preset", ""), commit=entry.get("commit", ""),
                          created=entry.get("created", ""))
    return model.to(device).eval(), meta


def check_replaceable(folder: Path, file: str, variant: str, config: Mapping[str, Any]) -> None:
    """Refuse, in one line, to replace a shipped file that holds another variant or model config."""
    manifest = read_manifest(folder)
    entry = (manifest or {"models": {}})["models"].get(file)
    if entry is None:
        return
    # Fields added since it shipped take their defaults; fields of other variants' configs are dropped.
    shipped = model_config(entry["variant"], entry["config"]).to_dict() if entry["variant"] == variant else entry["config"]
    new = model_config(variant, config).to_dict()
    differ = sorted(key for key in new if new[key] != shipped.get(key))
    if entry["variant"] != variant or differ:
        what = (f"variant {entry['variant']} -> {variant}" if entry["variant"] != variant else
                ", ".join(f"{key} {shipped.get(key)} -> {new[key]}" for key in differ))
        raise CheckpointError(f"{folder / file}: shipped weights of another model ({what}); replacing them is refused "
                              "unless forced (--force-ship)")


def ship(checkpoints: Mapping[str, str | Path], folder: str | Path, trained_by: str, dtype: str = "float32",
         force: bool = False) -> list[Path]:
    """Write `<name>.pt` (weights only, in `dtype`) and the manifest for every `name -> checkpoint`;
    a file whose bytes are already there is left alone, one of another model config is refused unless
    `force`. Returns the files written."""
    folder = Path(folder)
    manifest = read_manifest(folder) or {"format": FORMAT, "models": {}}
    loaded = {name: load_checkpoint(checkpoint) for name, checkpoint in checkpoints.items()}
    if not force:  # every file checked before any is written
        for name, (_, meta) in loaded.items():
            check_replaceable(folder, f"{name}.pt", meta.model, meta.config)
    written = []
    for name, (model, meta) in loaded.items():
        buffer = io.BytesIO()
        torch.save({k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in model.state_dict().items()}, buffer)
        data, file = buffer.getvalue(), f"{name}.pt"
        digest = sha256(data)
        if manifest["models"].get(file, {}).get("sha256") == digest and (folder / file).is_file():
            continue
        write_atomic(folder / file, data)
        previous = manifest["models"].get(file)
        history = [*previous.get("history", []), {k: previous.get(k) for k in ("sha256", "created", "commit", "step")}] if previous else []
        manifest["models"][file] = {"history": history,
            "variant": meta.model, "config": meta.config, "preset": meta.preset, "step": meta.step, "dtype": dtype,
            "params": model.num_parameters(), "bytes": len(data), "sha256": digest, "commit": meta.commit,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "trained_by": trained_by}
        written.append(folder / file)
    if written:
        write_atomic(folder / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return written
