"""Training checkpoints: an ordinary `harness.checkpoint` file (model name, config, step, weights;
loadable by evaluation) whose `extra` holds everything an exact resume needs: optimizer and
scheduler states, the position in the example stream, the training clock and every RNG state.

The last two are kept: `checkpoint.pt` (the newest) and `checkpoint.previous.pt`. A new one is written
whole beside them first, then takes the newest's name, so a save cut short never costs a checkpoint.
A resume takes the newest intact one; a damaged newest one is named in one warning and the previous
one is used; when none is intact the run refuses with one line."""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import describe_error, is_our_checkpoint, save_checkpoint
from ..errors import CheckpointError

log = logging.getLogger(__name__)


def rng_states() -> dict[str, Any]:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def previous_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.previous{path.suffix}")


def _written_path(path: Path) -> Path:
    """Where a new checkpoint is complete on disk before it takes the newest's name."""
    return path.with_name(f"{path.stem}.written{path.suffix}")


def save_state(path: str | Path, *, model, preset: str, optimizer, scheduler, step: int, examples_seen: int,
               train_seconds: float, settings: dict[str, Any], modules: dict[str, Any] | None = None) -> Path:
    """Write the newest checkpoint; the one it replaces becomes the previous one (the one before is
    dropped). `modules`: further state dicts trained with the model (REPA's projector)."""
    path = Path(path)
    extra = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "examples_seen": examples_seen,
        "train_seconds": train_seconds,
        "rng": rng_states(),
        "settings": settings,
        "modules": {name: module.state_dict() for name, module in (modules or {}).items()},
    }
    written = save_checkpoint(_written_path(path), model, step=step, preset=preset, extra=extra)
    if path.is_file():
        os.replace(path, previous_path(path))
    os.replace(written, path)
    return path


def load_state(path: str | Path) -> dict[str, Any]:
    """One training checkpoint, or one CheckpointError line saying why it cannot be resumed from."""
    path = Path(path)
    try:
        # Not weights-only: the RNG states hold numpy and Python objects; load only checkpoints you wrote.
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001  (torch raises many types for a damaged file)
        reason = describe_error(error).split(". ")[0].rstrip(".")
        raise CheckpointError(f"{path}: damaged, not a readable torch file ({path.stat().st_size} bytes; {reason})") from None
    if not is_our_checkpoint(payload) or "optimizer" not in payload.get("extra", {}):
        raise CheckpointError(f"{path}: not a training checkpoint of this harness (no optimizer state to resume from)")
    return payload


def latest_state(path: str | Path) -> dict[str, Any] | None:
    """The newest intact training checkpoint among `path`, one written but not yet renamed, and the
    previous one; None when there is none (a fresh start). A damaged newer one is named in one warning;
    when every one there is damaged, one CheckpointError line names them all."""
    path = Path(path)
    candidates = [p for p in (path, _written_path(path), previous_path(path)) if p.is_file()]
    damaged: list[str] = []
    for candidate in candidates:
        try:
            state = load_state(candidate)
        except CheckpointError as error:
            damaged.append(str(error))
            continue
        if damaged:
            log.warning("%s; resuming from %s (step %d) instead", "; ".join(damaged), candidate.name, int(state["step"]))
        elif candidate != path:
            log.warning("%s: absent (a save was cut short); resuming from %s (step %d)", path, candidate.name,
                        int(state["step"]))
        return state
    if damaged:
        raise CheckpointError(f"{path.parent}: no intact training checkpoint to resume from ({'; '.join(damaged)}); "
                              f"delete {path.parent} to train from the start")
    return None
