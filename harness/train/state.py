"""Training checkpoints: an ordinary `harness.checkpoint` file (model name, config, step, weights;
loadable by evaluation) whose `extra` holds everything an exact resume needs: optimizer and
scheduler states, the position in the example stream, the training clock and every RNG state."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import is_our_checkpoint, save_checkpoint


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


def save_state(path: str | Path, *, model, preset: str, optimizer, scheduler, step: int, examples_seen: int,
               train_seconds: float, settings: dict[str, Any]) -> Path:
    extra = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "examples_seen": examples_seen,
        "train_seconds": train_seconds,
        "rng": rng_states(),
        "settings": settings,
    }
    return save_checkpoint(path, model, step=step, preset=preset, extra=extra)


def load_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        # Not weights-only: the RNG states hold numpy and Python objects; load only checkpoints you wrote.
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001  (torch raises many types for a damaged file)
        raise RuntimeError(f"{path}: not a readable training checkpoint ({type(error).__name__}: {error})") from None
    if not is_our_checkpoint(payload) or "optimizer" not in payload.get("extra", {}):
        raise RuntimeError(f"{path}: not a training checkpoint of this harness (no optimizer state to resume from)")
    return payload
