"""Load official LVSM / Efficient-LVSM weights: rename their keys onto ours, recover the sizes from
the weights' shapes, and refuse anything that does not fit (nanoGPT's `from_pretrained`, timm's
checkpoint filters)."""
from __future__ import annotations

import contextlib
import copy
import functools
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping

import torch

from .base import NVSModel
from .registry import list_models, model_class, model_config, presets

Loader = Callable[[str], Any]  # imports one of the official code's modules by name (harness.parity.official_code)
Views = tuple[torch.Tensor, ...]  # input images, input c2w, input fxfycxcy, target c2w, target fxfycxcy


@dataclass(frozen=True)
class OfficialCode:
    """Where a variant lives in its official repository and how that code is run beside ours (by the
    parity kind, which knows no variant): the repository and the variable `make parity` names its
    checkout with, the YAML its model is built from, and four hooks. `yaml(data, config, n_input,
    n_target)`: their YAML with our sizes, rendering only. `build(load, yaml)`: their model. `render(model,
    views)`: a call rendering the target views. `extra_flops(ours, n, m, batch, image_size)`: what their
    forward executes beyond ours by design. `portable(load)`: a context in which their code computes
    with the numerics of our `portable_numerics()` (None: it always does)."""
    repository: str
    variable: str
    config: str
    yaml: Callable[[dict, Any, int, int], dict]
    build: Callable[[Loader, dict], torch.nn.Module]
    render: Callable[[torch.nn.Module, Views], Callable[[], torch.Tensor]]
    extra_flops: Callable[[NVSModel, int, int, int, int], int]
    root: str = ""  # the folder of the checkout its modules import from
    marker: str = "model"  # what that folder holds (a package or a module)
    compiled: bool = False  # it wraps functions in @torch.compile, which the parity kind takes off (eager, as ours)
    config_from_yaml: bool = True  # its YAML's sizes go to load_official (False: the weights alone say them)
    portable: Callable[[Loader], ContextManager] | None = None

    def portable_context(self, load: Loader) -> ContextManager:
        return self.portable(load) if self.portable else contextlib.nullcontext()


class AttrDict(dict):
    """The official LVSM-family code reads its config by attribute (EasyDict-style)."""

    def __init__(self, data: dict[str, Any]):
        super().__init__({k: AttrDict(v) if isinstance(v, dict) else v for k, v in data.items()})

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def lvsm_rays_bmm_flops(model: NVSModel, n: int, m: int, batch: int, image_size: int) -> int:
    """The official LVSM-family code rotates each pixel's ray direction with a batched 3x3 matmul (18 FLOPs
    per pixel per view, which FlopCounterMode counts); ours rotates them elementwise (which it does not)."""
    return 18 * batch * (n + m) * image_size ** 2


def lvsm_official_yaml(transformer_sizes: Callable[[Any], dict], dual_stream: bool = False):
    """The `yaml` hook of an LVSM-family release: their YAML with our sizes, rendering only (no loss
    networks, no REPA, no gradient checkpoints). `transformer_sizes(config)`: the depth keys of their
    `transformer` section; `dual_stream`: Efficient-LVSM's layout (no separate image tokenizer, REPA off)."""
    def yaml(data: dict, config: Any, n_input: int, n_target: int) -> dict:
        model, training = data["model"], data["training"]
        for tokenizer in ("image_tokenizer", "target_pose_tokenizer"):
            model[tokenizer].update(image_size=config.image_size, patch_size=config.patch_size)
        model["transformer"].update(d=config.dim, d_head=config.head_dim, use_qk_norm=config.qk_norm, **transformer_sizes(config))
        if dual_stream:
            model["image_tokenizer"]["type"] = "none"
            training["enable_repa"] = False
        training.update(lpips_loss_weight=0.0, perceptual_loss_weight=0.0, num_input_views=n_input, num_target_views=n_target,
                        num_views=n_input + n_target, target_has_input=False, grad_checkpoint_every=1)
        data.setdefault("inference", {})["if_inference"] = False
        return data
    return yaml


def lvsm_official_build(load: Loader, data: dict) -> torch.nn.Module:
    """An LVSM-family model from the class its YAML names."""
    module_name, _, class_name = data["model"]["class_name"].rpartition(".")
    return getattr(load(module_name), class_name)(attribute_config(data))


def attribute_config(data: dict[str, Any]) -> Any:
    """A copy of `data` read by attribute, as the official LVSM-family code reads its config (EasyDict
    where installed, as theirs)."""
    try:
        from easydict import EasyDict
    except ImportError:
        return AttrDict(copy.deepcopy(data))
    return EasyDict(copy.deepcopy(data))


def lvsm_official_batch(views: Views) -> dict[str, torch.Tensor]:
    """The official LVSM-family batch: every view's camera in one tensor, input views first."""
    images, in_c2w, in_k, tgt_c2w, tgt_k = views
    return {"image": images, "c2w": torch.cat([in_c2w, tgt_c2w], 1), "fxfycxcy": torch.cat([in_k, tgt_k], 1)}


def lvsm_official_render(model: torch.nn.Module, views: Views) -> Callable[[], torch.Tensor]:
    batch = lvsm_official_batch(views)
    return lambda: model(batch, has_target_image=False).render


# Training-only parts of official checkpoints; they carry no rendering weights.
TRAINING_ONLY_PREFIXES = ("loss_computer.", "repa", "dino", "projector")
WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "module", "ema")
# Official config keys (flat or nested YAML) -> ours.
OFFICIAL_CONFIG_KEYS = {
    "d": "dim", "d_head": "head_dim", "patch_size": "patch_size", "mlp_ratio": "mlp_ratio",
    "n_layer": "depth", "n_encoder_layers": "encoder_depth", "encoder_n_layer": "encoder_depth",
    "n_decoder_layers": "decoder_depth", "decoder_n_layer": "decoder_depth",
    "n_latent_vectors": "n_latents", "use_qk_norm": "qk_norm", "image_h": "image_size",
    # LaCT's flat config
    "dim": "dim", "layers": "depth", "attn_head_dim": "head_dim", "attn_qk_norm": "qk_norm",
    "mlp_inter_multi": "mlp_ratio", "ttt_inter_multi": "fast_weight_ratio",
}


def unwrap_checkpoint(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A state dict from a path or a dict that may wrap it (under `model`, `state_dict`, ...), with
    DDP's `module.` and torch.compile's `_orig_mod.` prefixes removed."""
    if isinstance(obj, (str, Path)):
        path = Path(obj)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint file not found")
        source = str(path)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # noqa: BLE001  (torch raises many types for a file that is not its own)
            raise ValueError(f"{path}: not a readable torch checkpoint ({_first_line(error)}); expected a file "
                             "written by torch.save holding a state dict") from None
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


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _rename(cls: type[NVSModel], key: str) -> str:
    for pattern, replacement in cls.official_key_map:
        key = re.sub(pattern, replacement, key)
    return key


def convert_official_state_dict(cls: type[NVSModel], state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    converted, dropped = {}, []
    for key, value in state.items():
        if key.startswith(TRAINING_ONLY_PREFIXES):
            dropped.append(key)
            continue
        converted[_rename(cls, key)] = value
    if dropped:
        warnings.warn(f"load_official: ignored {len(dropped)} training-only tensors (e.g. {dropped[0]})", stacklevel=3)
    return converted


# ------------------------------------------------------------------------------- which variant, how deep

_NUMBERED = re.compile(r"^(.*?)\.(\d+)\.")


def _numbered_lists(keys) -> dict[str, set[int]]:
    """Block lists in state-dict keys: prefix -> the block indices present (`blocks.3.attn...`)."""
    lists: dict[str, set[int]] = {}
    for key in keys:
        if m := _NUMBERED.match(key):
            lists.setdefault(m.group(1), set()).add(int(m.group(2)))
    return lists


def _top_names(keys) -> set[str]:
    return {key.split(".", 1)[0] for key in keys}


@functools.cache
def _skeleton(cls: type[NVSModel]) -> tuple[frozenset[str], frozenset[str]]:
    """`cls`'s top-level state-dict names and block-list prefixes, from a tiny model on the meta
    device (no memory, no init)."""
    with torch.device("meta"):
        keys = list(cls(presets(cls.name)["tiny"]).state_dict())
    return frozenset(_top_names(keys)), frozenset(_numbered_lists(keys))


def _looks_like(cls: type[NVSModel], official_keys) -> bool:
    try:
        expected = _skeleton(cls)[0]
    except Exception:  # noqa: BLE001  (a plugin variant that cannot be built at the tiny size takes no part)
        return False
    return expected <= _top_names(_rename(cls, k) for k in official_keys)


def check_variant(name: str, official_keys) -> None:
    """Refuse weights whose key signature (the top-level modules they fill) is another variant's:
    named plainly instead of surfacing later as a missing key or a zero depth."""
    keys = [k for k in official_keys if not k.startswith(TRAINING_ONLY_PREFIXES)]
    if _looks_like(model_class(name), keys):
        return
    matches = [other for other in list_models() if other != name and _looks_like(model_class(other), keys)]
    if matches:
        alike = " (or ".join(matches) + ")" * (len(matches) - 1)
        raise ValueError(f"load_official: these weights look like {alike}, not {name} "
                         f"(their top-level keys: {', '.join(sorted(_top_names(keys)))})")


def _official_prefix(prefix: str, origin: Mapping[str, str]) -> str:
    """The official name of one of our block lists (`blocks` -> `transformer_blocks`), for messages."""
    for ours, theirs in origin.items():
        if ours.startswith(prefix + ".") and (m := _NUMBERED.match(theirs)):
            return m.group(1)
    return prefix


def _check_contiguous(cls: type[NVSModel], state: Mapping[str, torch.Tensor], origin: Mapping[str, str]) -> None:
    try:
        block_lists = _skeleton(cls)[1]
    except Exception:  # noqa: BLE001  (a plugin variant that cannot be built at the tiny size: its depth lists)
        block_lists = frozenset(cls.depth_fields.values())
    for prefix, indices in _numbered_lists(state).items():
        if prefix not in block_lists:
            continue
        gaps = sorted(set(range(max(indices) + 1)) - indices)
        if gaps:
            official = _official_prefix(prefix, origin)
            raise ValueError(f"load_official: {cls.name} weights lack block {official}.{gaps[0]} (they hold "
                             f"{official}.{{{','.join(map(str, sorted(indices)))}}}); blocks must run 0..N-1 without gaps")


def _flatten(config: Mapping[str, Any]) -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value))
        else:
            flat[key] = value
    return flat


def _block_count(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    indices = _numbered_lists(state).get(prefix)
    if not indices:
        raise ValueError(f"load_official: no blocks '{prefix}.N.*' in the weights; is this a checkpoint of the named model?")
    return max(indices) + 1


def config_from_weights(cls: type[NVSModel], state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Every size the weights determine (image size excepted: no weight depends on it)."""
    tokenizer = state.get("input_tokenizer.proj.weight")
    if tokenizer is None:
        raise KeyError("load_official: missing key 'input_tokenizer.proj.weight' (official 'image_tokenizer.1.weight', "
                       "'rgbp_tokenizer.1.weight' or 'input_linear.weight'); is this a checkpoint of the named model?")
    dim, fan_in = tokenizer.shape
    sizes: dict[str, Any] = {"dim": int(dim), "patch_size": round((fan_in / cls.input_channels) ** 0.5)}
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
    fast_w0 = state.get(f"{block}.0.fast.w0")  # [heads, head width, hidden width]
    if fast_w0 is not None:
        sizes["fast_weight_heads"] = int(fast_w0.shape[0])
        sizes["fast_weight_ratio"] = int(fast_w0.shape[-1] // fast_w0.shape[-2])
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
    if "ttt_head_dim" in flat and "dim" in flat:  # LaCT names the fast-weight heads' width
        ours["fast_weight_heads"] = flat["dim"] // flat["ttt_head_dim"]
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
    cls.require("official_weights")
    if weights is None and config is not None and (isinstance(config, (str, Path)) or any(
            isinstance(v, torch.Tensor) or k in WRAPPER_KEYS for k, v in config.items())):
        config, weights = None, config
    if weights is None:
        raise ValueError("load_official: no weights given (a state dict, a dict wrapping one, or a checkpoint path)")
    official = unwrap_checkpoint(weights)
    check_variant(name, official)
    state = convert_official_state_dict(cls, official)
    origin = {_rename(cls, key): key for key in official}
    _check_contiguous(cls, state, origin)
    from_weights = config_from_weights(cls, state)
    from_config = _config_from_official(cls, config) if config else {}
    for key, value in from_config.items():
        if key in from_weights and from_weights[key] != value:
            raise ValueError(f"load_official: config says {key}={value!r} but the weights imply {from_weights[key]!r}")
    if not config:
        _check_paper_depth(cls, from_weights, origin)
    model = cls(model_config(name, {**from_config, **from_weights}))
    _check_block_counts(model, state, origin)
    load_checked(model, state, strict=strict)
    return model.eval()


def _check_paper_depth(cls: type[NVSModel], sizes: Mapping[str, Any], origin: Mapping[str, str]) -> None:
    """Weights of the paper's width with fewer blocks than the paper's model are, without a config
    to say otherwise, far more likely a checkpoint that lost its last blocks than a shallower model:
    trailing blocks leave no other trace in the weights."""
    paper = presets(cls.name).get("paper")
    if paper is None:
        return
    if any(sizes.get(key) != getattr(paper, key) for key in ("dim", "head_dim", "patch_size")):
        return
    for field, prefix in cls.depth_fields.items():
        found, expected = sizes[field], getattr(paper, field)
        if found < expected:
            official = _official_prefix(prefix, origin)
            raise ValueError(f"load_official: {cls.name} weights of the paper's width hold {found} blocks under "
                             f"{official!r} where the paper's model has {expected} (block {official}.{found} is missing?); "
                             f"give the official config to load a shallower model on purpose")


def _check_block_counts(model: NVSModel, state: Mapping[str, torch.Tensor], origin: Mapping[str, str]) -> None:
    """Block lists whose depth no config field sets (Efficient-LVSM's target stream follows its input
    stream) must hold as many blocks as the model built from the weights: otherwise one missing
    trailing block is a long list of missing keys, or with strict=False silently dropped weights."""
    needed = {prefix: len(indices) for prefix, indices in _numbered_lists(model.state_dict()).items()}
    present = _numbered_lists(state)
    held = {prefix: len(present.get(prefix, ())) for prefix in needed}
    if held == needed:
        return
    # A list shorter than the model lacks its next block; when none is, the list the depth was read
    # from is the one that lost its last block, and it is the shortest.
    short = [prefix for prefix in needed if held[prefix] < needed[prefix]]
    prefix = short[0] if short else min(held, key=held.get)
    name = {p: _official_prefix(p, origin) for p in needed}
    raise ValueError(f"load_official: {model.name} weights hold "
                     f"{', '.join(f'{held[p]} blocks under {name[p]!r}' for p in needed)}; the model built from them "
                     f"needs {', '.join(str(needed[p]) for p in needed)}: block {name[prefix]}.{held[prefix]} is missing")


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
