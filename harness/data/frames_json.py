"""What the JSON-described sources (`lvsm_json`, `transforms_json`) share: a file holding an object
with a non-empty `frames` list, frames that must carry some keys, and a 4x4 (or 3x4) pose matrix per frame."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import DataError


def read_frames(path: Path, source: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The file's top-level object and its `frames`; `source` prefixes the error messages."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{source} {path}: not valid JSON ({error})") from None
    frames = data.get("frames") if isinstance(data, dict) else None
    if not isinstance(frames, list) or not frames:
        raise DataError(f"{source} {path}: expected an object with a non-empty 'frames' list")
    return data, frames


def require_keys(frame: dict[str, Any], keys: Sequence[str], where: str) -> None:
    missing = [k for k in keys if k not in frame]
    if missing:
        raise DataError(f"{where}: missing key {missing[0]!r}")


def pose_rows(frame: dict[str, Any], key: str, where: str, expected: str) -> torch.Tensor:
    """The top 3x4 rows of the frame's 4x4 (or 3x4) matrix under `key`, in float64; `expected` ends the
    error message (each source words it for its own format)."""
    matrix = torch.tensor(frame[key], dtype=torch.float64)
    if matrix.shape not in ((4, 4), (3, 4)):
        raise DataError(f"{where}: {key!r} has shape {tuple(matrix.shape)}; expected {expected}")
    return matrix[:3]
