"""Load official LVSM / Efficient-LVSM weights: rename their keys onto ours, recover the sizes from
the weights' shapes, and refuse anything that does not fit (nanoGPT's `from_pretrained`, timm's
checkpoint filters)."""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from .base import NVSModel
from .config import ModelConfig
from .registry import model_class

# Training-only parts of official checkpoints; they carry no rendering weights.
TRAINING_ONLY_PREFIXES = ("loss_computer.", "repa", "dino", "projector")
WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "module", "ema")
# Official config keys (flat or nested YAML) -> ours.
OFFICIAL_CONFIG_KEYS = {
    "d": "dim", "d_head": "head_dim", "patch_size": "patch_size", "mlp_ratio": "mlp_ratio",
    "n_layer": "depth", "n_encoder_layers": "encoder_depth", "encoder_n_layer": "encoder_depth",
    "n_decoder_layers": "decoder_depth", "decoder_n_layer": "decoder_depth",
    "n_latent_vectors": "n_latents", "use_qk_norm": "qk_norm", "image_h": "image_size",
}


def unwrap_checkpoint(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A state dict from a path or a dict that may wrap it (under `model`, `state_dict`, ...), with
    DDP's `module.` and torch.compile's `_orig_mod.` prefixes removed."""
    if isinstance(obj, (str, Path)):
        path = Path(obj)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint file not found")
        source = str(path)
        obj = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(obj, Mapping):
        raise TypeError(f"{source}: expected a state dict or a dict wrapping one, got {type(obj).__name__}")
    while not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise KeyError(f"{source}: no tensors found; expected the weights at top level or under one of {list(WRAPPER_KEYS)}")
        obj = inner
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        state[key] = value
    return state


def convert_official_state_dict(cls: type[NVSModel], state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    converted, dropped = {}, []
    for key, value in state.items():
        if key.startswith(TRAINING_ONLY_PREFIXES):
            dropped.append(key)
            continue
        new = key
        for pattern, replacement in cls.official_key_map:
            new = re.sub(pattern, replacement, new)
        converted[new] = value
    if dropped:
        warnings.warn(f"load_official: ignored {len(dropped)} training-only tensors (e.g. {dropped[0]})", stacklevel=3)
    return converted


def _flatten(config: Mapping[str, Any]) -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value))
        else:
            flat[key] = value
    return flat


def _block_count(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def config_from_weights(cls: type[NVSModel], state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Every size the weights determine (image size excepted: no weight depends on it)."""
    tokenizer = state.get("input_tokenizer.proj.weight")
    if tokenizer is None:
        raise KeyError("load_official: missing key 'input_tokenizer.proj.weight' (official 'image_tokenizer.1.weight' "
                       "or 'rgbp_tokenizer.1.weight'); is this a checkpoint of the named model?")
    dim, fan_in = tokenizer.shape
    sizes: dict[str, Any] = {"dim": int(dim), "patch_size": round((fan_in / 9) ** 0.5)}
    for field, prefix in cls.depth_fields.items():
        sizes[field] = _block_count(state, prefix)
    block = next(iter(cls.depth_fields.values()))
    q_norm = state.get(f"{block}.0.attn.q_norm.weight")
    sizes["qk_norm"] = q_norm is not None
    if q_norm is not None:
        sizes["head_dim"] = int(q_norm.shape[0])
    fc_in = state.get(f"{block}.0.mlp.fc_in.weight")
    if fc_in is not None:
        sizes["mlp_ratio"] = int(fc_in.shape[0] // dim)
    if "latents" in state:
        sizes["n_latents"] = int(state["latents"].shape[0])
    return sizes


def _config_from_official(cls: type[NVSModel], config: Mapping[str, Any]) -> dict[str, Any]:
    flat = _flatten(config)
    ours = {OFFICIAL_CONFIG_KEYS[key]: value for key, value in flat.items() if key in OFFICIAL_CONFIG_KEYS}
    if "depth" in ours and "depth" not in cls.depth_fields:
        depth = ours.pop("depth")
        if len(cls.depth_fields) == 1:  # Efficient-LVSM's n_layer counts blocks per stream
            ours[next(iter(cls.depth_fields))] = depth
    if "image_size" in ours and "image_w" in flat and flat["image_w"] != ours["image_size"]:
        del ours["image_size"]  # non-square training size: keep the preset's square profiling size
    return ours


def load_official(name: str, config: Mapping[str, Any] | str | Path | None = None,
                  weights: Mapping[str, Any] | str | Path | None = None, strict: bool = True) -> NVSModel:
    """Build `name` with official weights.

    `load_official(name, config_dict, state_dict)`, `load_official(name, None, "ckpt.pt")` or
    `load_official(name, "ckpt.pt")`: the config may be omitted, since the weights determine every
    size; where it is given, it must agree with them.
    """
    cls = model_class(name)
    if weights is None and config is not None and (isinstance(config, (str, Path)) or any(
            isinstance(v, torch.Tensor) or k in WRAPPER_KEYS for k, v in config.items())):
        config, weights = None, config
    if weights is None:
        raise ValueError("load_official: no weights given (a state dict, a dict wrapping one, or a checkpoint path)")
    state = convert_official_state_dict(cls, unwrap_checkpoint(weights))
    from_weights = config_from_weights(cls, state)
    from_config = _config_from_official(cls, config) if config else {}
    for key, value in from_config.items():
        if key in from_weights and from_weights[key] != value:
            raise ValueError(f"load_official: config says {key}={value!r} but the weights imply {from_weights[key]!r}")
    model = cls(ModelConfig(**{**from_config, **from_weights}))
    load_checked(model, state, strict=strict)
    return model.eval()


def load_checked(model: NVSModel, state: Mapping[str, torch.Tensor], strict: bool = True) -> None:
    """load_state_dict that names every missing key, unexpected key and shape mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k}: expected {list(own[k].shape)}, got {list(state[k].shape)}"
                  for k in sorted(set(own) & set(state)) if own[k].shape != state[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected and strict:
        problems.append(f"unexpected keys {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches {mismatched}")
    if problems:
        raise KeyError(f"{model.name}: weights do not fit: " + "; ".join(problems))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
