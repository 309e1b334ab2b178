"""What the JSON-described sources (`lvsm_json`, `transforms_json`) share: a file holding an object
with a non-empty `frames` list, frames that must carry some keys, and a 4x4 (or 3x4) pose matrix per frame
(finite numbers only)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import DataError
from .geometry import singular_frames


def read_frames(path: Path, source: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The file's top-level object and its `frames`; `source` prefixes the error messages."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{source} {path}: not valid JSON ({error})") from None
    frames = data.get("frames") if isinstance(data, dict) else None
    if not isinstance(frames, list) or not frames:
        raise DataError(f"{source} {path}: expected an object with a non-empty 'frames' list")
    bad = next((j for j, frame in enumerate(frames) if not isinstance(frame, dict)), None)
    if bad is not None:
        raise DataError(f"{source} {path}: frame {bad} is {_short(frames[bad])}; expected an object")
    return data, frames


def require_keys(frame: dict[str, Any], keys: Sequence[str], where: str) -> None:
    missing = [k for k in keys if k not in frame]
    if missing:
        raise DataError(f"{where}: missing key {missing[0]!r}")


def pose_rows(frame: dict[str, Any], key: str, where: str, expected: str) -> torch.Tensor:
    """The top 3x4 rows of the frame's 4x4 (or 3x4) matrix under `key`, in float64; `expected` ends the
    error message (each source words it for its own format)."""
    matrix = numbers(frame[key], key, where, expected)
    if matrix.shape not in ((4, 4), (3, 4)):
        raise DataError(f"{where}: {key!r} has shape {tuple(matrix.shape)}; expected {expected}")
    return matrix[:3]


def invertible_w2c(frame: dict[str, Any], where: str) -> torch.Tensor:
    """The frame's world-to-camera matrix under 'w2c' (top 3x4 rows), refused when its rotation block
    cannot be inverted."""
    w2c = pose_rows(frame, "w2c", where, "a 4x4 (or 3x4) matrix")
    if singular_frames(w2c):
        raise DataError(f"{where}: 'w2c' has a singular rotation block; expected an invertible world-to-camera matrix")
    return w2c


def numbers(value: Any, key: str, where: str, expected: str) -> torch.Tensor:
    """A nested list of finite numbers as a float64 tensor. JSON readers accept NaN and Infinity, and
    one such camera value spreads through pose normalisation to every view of the scene, so they are
    refused here, with ragged or non-numeric rows."""
    if isinstance(value, (str, bytes, dict)) or not _numeric(value):
        raise DataError(f"{where}: {key!r} holds a value that is not a number ({_short(value)}); expected {expected}")
    try:
        tensor = torch.tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise DataError(f"{where}: {key!r} has rows of different lengths ({_short(value)}); expected {expected}") from None
    if not bool(torch.isfinite(tensor).all()):
        raise DataError(f"{where}: {key!r} holds NaN or Infinity ({_short(value)}); expected finite numbers")
    return tensor


def _numeric(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_numeric(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
