"""Our own checkpoints: one file holds the model's registry name, its full config, the training step
and the weights, so the file alone rebuilds the model. Official LVSM / Efficient-LVSM checkpoints
are read through `models.load_official` when the model name is given."""
from __future__ import annotations

import datetime as _dt
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from models import NVSModel, build_model, list_models, load_official, model_config
from models.official import load_checked

from .errors import CheckpointError, MissingResource
from .provenance import git_commit
from .records import write_atomic

FORMAT = "lvsm-bench-checkpoint/1"


@dataclass
class CheckpointMeta:
    model: str
    config: dict[str, Any]
    step: int
    source: str  # "ours" or "official"
    path: str
    preset: str = ""
    commit: str = ""
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def weights_label(self) -> str:
        return f"checkpoint step {self.step}" if self.source == "ours" else "official"


def save_checkpoint(path: str | Path, model: NVSModel, step: int = 0, preset: str = "",
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Write atomically (temp file + rename): an interrupted save never leaves a torn checkpoint.
    `extra` holds anything else worth keeping (optimizer state, data seed, ...)."""
    if not model.name:
        raise ValueError(f"save_checkpoint: {type(model).__name__} is not a registered model (no name)")
    payload = {
        "format": FORMAT,
        "model": model.name,
        "config": model.config.to_dict(),
        "preset": preset,
        "step": int(step),
        "commit": git_commit(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": dict(extra or {}),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_atomic(path, buffer.getvalue())
    return Path(path)


def is_our_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == FORMAT


def load_checkpoint(path: str | Path, model_name: str | None = None, device: torch.device | str = "cpu",
                    strict: bool = True) -> tuple[NVSModel, CheckpointMeta]:
    """`(model, meta)` from one of our checkpoints, or from an official one when `model_name` says
    which variant it holds (official files do not name their model). Every way the file can fail to
    be that (absent, not a torch file, truncated, another variant's weights, keys or shapes that do
    not fit) is one CheckpointError / MissingResource line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingResource(f"{path}: checkpoint file not found; expected an lvsm-bench checkpoint "
                              "(save_checkpoint) or official LVSM / Efficient-LVSM weights")
    obj = read_torch_file(path)
    try:
        model, meta = _build(path, obj, model_name, strict)
    except (ValueError, KeyError, TypeError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{path}: {describe_error(error)}") from None
    return model.to(device).eval(), meta


def read_torch_file(path: Path) -> Any:
    """`torch.load` of a file expected to hold a checkpoint; anything else is one CheckpointError line.
    (torch's own errors say "mmap", "PytorchStreamReader" or "Invalid argument" without the file.)"""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001  (pickle, zip and OS errors all mean "not a usable torch file")
        size = path.stat().st_size
        reason = describe_error(error).split(". ")[0].rstrip(".")
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({size} bytes; {reason}); expected a complete "
                              "file written by torch.save (an lvsm-bench checkpoint or official LVSM / Efficient-LVSM "
                              "weights), not a damaged, truncated or other file") from None


def describe_error(error: BaseException) -> str:
    """One line from an exception (KeyError's str() quotes its message; torch's are multi-line)."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    first = (str(text).strip().splitlines() or [type(error).__name__])[0]
    return first if isinstance(error, (ValueError, KeyError)) else f"{type(error).__name__}: {first}"


def _build(path: Path, obj: Any, model_name: str | None, strict: bool) -> tuple[NVSModel, CheckpointMeta]:
    if is_our_checkpoint(obj):
        name = obj.get("model")
        if model_name and model_name != name:
            raise CheckpointError(f"{path}: holds model {name!r}, but {model_name!r} was asked for")
        if name not in list_models():
            raise CheckpointError(f"{path}: model {name!r} is not registered; allowed: {list_models()}")
        for key in ("config", "state_dict"):
            if not isinstance(obj.get(key), Mapping):
                raise CheckpointError(f"{path}: lvsm-bench checkpoint without its {key!r} dict (damaged or hand-edited)")
        try:
            config = model_config(name, obj["config"])
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{path}: config does not fit this code's {name} config ({error})") from None
        with torch.device("meta"):
            model = build_model(name, config)
        model = model.to_empty(device="cpu")
        load_checked(model, obj["state_dict"], strict=strict)
        meta = CheckpointMeta(model=name, config=obj["config"], step=int(obj.get("step", 0)), source="ours",
                              path=str(path), preset=obj.get("preset", ""), commit=obj.get("commit", ""),
                              created=obj.get("created", ""), extra=dict(obj.get("extra", {})))
    else:
        if not model_name:
            raise CheckpointError(f"{path}: not an lvsm-bench checkpoint; for an official checkpoint give the model "
                                  f"name (one of {list_models()})")
        model = load_official(model_name, obj, strict=strict)
        meta = CheckpointMeta(model=model_name, config=model.config.to_dict(), step=int(_official_step(obj)),
                              source="official", path=str(path))
    return model, meta


def _official_step(obj: Any) -> int:
    if isinstance(obj, Mapping):
        for key in ("step", "fwdbwd_pass_step", "global_step", "iteration"):
            value = obj.get(key)
            if isinstance(value, int):
                return value
    return 0
