"""REPA for novel view synthesis: align hidden states of chosen layers with a frozen vision encoder.

Efficient-LVSM's release trains with REPA (Yu et al., "Representation Alignment for Generation",
ICLR 2025): the target-stream hidden states of chosen layers go through a 3-layer MLP projector
(dim -> hidden -> hidden -> teacher_dim, SiLU between) and are pulled towards a frozen encoder's
patch features of the TARGET images with a Smooth-L1 loss, weighted 0.5 (the paper reports +0.8 dB
on Efficient-LVSM, +0.16 dB on LVSM). Training only: evaluation and checkpoints hold the model alone.

The teacher (`train.repa`):

    train:
      repa:
        teacher: teachers/dino_vitb16.py:DinoPatches   # or "package.module:attr"
        weights: /data/weights/dino_vitbase16_pretrain.pth
        layers: [3]           # 0-based target blocks; [] = the default below
        weight: 0.5
        projector_hidden: 256
        teacher_dim: 768      # optional; checked against the teacher's output

`teacher` names a callable (a class or a function) that takes no arguments and returns the
encoder as an `nn.Module`; its weights are then loaded strictly from `weights` (a state dict file,
possibly wrapped under `model`, `state_dict`, `teacher` ...). Nothing is downloaded: without the
file the run stops with one `MissingResource` line naming it, and never trains against a random
teacher. The module is called on images [B, 3, H, W] in [0, 1] at the training size (any resizing
or ImageNet normalisation is the teacher module's job) and returns patch features as [B, T, C], as
[B, C, h, w], or as a dict holding `x_norm_patchtokens` (DINOv2/v3 `forward_features`). Class and
register tokens must be dropped by the teacher: T must be a patch grid of the image's aspect. For
a DINO ViT-B/16 state dict, subclass DINO's `VisionTransformer` (its parameter names then match
the file) with a `forward` that normalises and returns `get_intermediate_layers(x)[0][:, 1:]`.
Teacher tokens are bilinearly resampled to the model's token grid when the two grids differ.

Which hidden states (`layers`, 0-based block indices, negative counting from the end; one
projector per layer, their losses averaged), as each variant declares them (`target_states`, beside
`depth_fields`), so a plugin variant can be aligned too:
- Efficient-LVSM and its ablations (`target_blocks`): the output of target block i, [b*m, P, d].
- LVSM decoder-only and the ablations built on it or on joint attention (`blocks`, sequences
  [inputs ; target]): the target tokens of block i's output.
- LVSM encoder-decoder (`decoder`, sequences [target ; latents]): the target tokens of decoder block i.
A variant that declares none is refused with a ConfigError. The default (`layers: []`) is the single block at
one third of that depth, index max(depth // 3 - 1, 0): block 3 of Efficient-LVSM's 12 target
blocks, the same relative depth as REPA's layer 8 of SiT-XL's 28 (the release's own choice is not
restated here); block 0 of the tiny and small presets.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import math
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import CheckpointError, ConfigError, MissingResource
from .config import RepaSpec


# ------------------------------------------------------------------------------------ teacher


def resolve_constructor(spec: str) -> Any:
    """`"package.module:attr"` or `"path/to/file.py:attr"` -> the attribute (not yet called)."""
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise ConfigError(f"train.repa.teacher: expected 'module:attr' or 'path/to/file.py:attr', got {spec!r}")
    if where.endswith(".py"):
        path = Path(where).expanduser()
        if not path.is_file():
            raise MissingResource(f"{path}: REPA teacher file not found (train.repa.teacher {spec!r})")
        from ..plugins import load_plugin
        module = importlib.import_module(load_plugin(path))
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as error:
            raise ConfigError(f"train.repa.teacher {spec!r}: cannot import module {where!r} ({error})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"train.repa.teacher {spec!r}: {where} has no attribute {attr!r}") from None


def read_teacher_weights(path: Path) -> dict[str, torch.Tensor]:
    from models.official import unwrap_checkpoint
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001  (pickle, zip and OS errors all mean "not a usable torch file")
        first = (str(error).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path}: not a readable torch file ({type(error).__name__}: {first}); "
                              "expected the REPA teacher's state dict written by torch.save") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("teacher"), Mapping):
        obj = obj["teacher"]  # DINO training checkpoints hold "student" and "teacher"
    try:
        return unwrap_checkpoint(obj, str(path))
    except (KeyError, TypeError) as error:
        raise CheckpointError(str(error.args[0] if error.args else error)) from None


def load_teacher(spec: str, weights: str | Path) -> nn.Module:
    """The frozen teacher: built by the constructor `spec`, weights loaded strictly from `weights`."""
    path = Path(os.path.expandvars(str(weights))).expanduser()  # $ENV_VARS allowed, as in experiment paths
    if not path.is_file():
        raise MissingResource(f"{path}: REPA teacher weights not found (train.repa.weights); nothing is downloaded here: "
                              f"put the state dict of {spec!r} there (REPA never trains against a random teacher)")
    constructor = resolve_constructor(spec)
    try:
        teacher = constructor()
    except Exception as error:  # noqa: BLE001  (the teacher's own code: report it as one line)
        raise ConfigError(f"train.repa.teacher {spec!r}: building the teacher failed ({type(error).__name__}: {error})") from None
    if not isinstance(teacher, nn.Module):
        raise ConfigError(f"train.repa.teacher {spec!r}: expected a callable returning an nn.Module, got {type(teacher).__name__}")
    state = read_teacher_weights(path)
    missing, unexpected = teacher.load_state_dict(state, strict=False)
    if missing or unexpected:
        problems = [f"{len(missing)} missing keys, first {missing[0]!r}" if missing else "",
                    f"{len(unexpected)} unexpected keys, first {unexpected[0]!r}" if unexpected else ""]
        raise ConfigError(f"{path}: the weights do not fit teacher {spec!r} ({'; '.join(p for p in problems if p)})")
    return teacher.eval().requires_grad_(False)


def teacher_tokens(output: Any, grid: tuple[int, int], image_hw: tuple[int, int]) -> torch.Tensor:
    """A teacher's output as patch features on the model's token grid: [B, gh*gw, C], float32."""
    if isinstance(output, Mapping):
        if "x_norm_patchtokens" not in output:
            raise ConfigError(f"REPA teacher returned a dict without 'x_norm_patchtokens' (keys {sorted(output)})")
        output = output["x_norm_patchtokens"]
    elif isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, torch.Tensor) or output.dim() not in (3, 4):
        raise ConfigError("REPA teacher: expected patch features [B, T, C] or [B, C, h, w], got "
                          f"{type(output).__name__}{list(output.shape) if isinstance(output, torch.Tensor) else ''}")
    features = output.float()
    if features.dim() == 3:
        b, t, c = features.shape
        h, w = image_hw
        rows = round(math.sqrt(t * h / w))
        cols = t // max(rows, 1)
        if rows * cols != t:
            raise ConfigError(f"REPA teacher returned {t} tokens, not a patch grid for {h}x{w} images; "
                              "drop class and register tokens in the teacher's forward")
        features = features.transpose(1, 2).reshape(b, c, rows, cols)
    if tuple(features.shape[-2:]) != grid:
        features = F.interpolate(features, size=grid, mode="bilinear", align_corners=False)
    return features.flatten(2).transpose(1, 2)


# ------------------------------------------------------------------------------ hidden states


def repa_tap(model: nn.Module) -> tuple[nn.ModuleList, str]:
    """The blocks whose outputs REPA reads, and where the target tokens sit in each output
    ("all": the output is the target tokens; "last"/"first": the last/first P tokens of a sequence),
    as the variant declares them (`NVSModel.target_states`)."""
    declared = getattr(model, "target_states", None)
    if declared is None:
        raise ConfigError(f"train.repa: model {getattr(model, 'name', type(model).__name__)!r} declares no target-token "
                          "hidden states (its class sets no `target_states`), so REPA cannot align it")
    blocks, position = declared
    return getattr(model, blocks), position


def default_layer(depth: int) -> int:
    return max(depth // 3 - 1, 0)


def resolve_layers(layers: list[int], depth: int) -> list[int]:
    chosen = list(layers) or [default_layer(depth)]
    bad = [i for i in chosen if not -depth <= i < depth]
    if bad:
        raise ConfigError(f"train.repa.layers: {bad[0]} is not a block of this model (it has {depth}: 0..{depth - 1}, "
                          "or negative from the end)")
    resolved = [i % depth for i in chosen]
    if len(set(resolved)) != len(resolved):
        raise ConfigError(f"train.repa.layers: {list(layers)} names a block twice")
    return resolved


class Projectors(nn.Module):
    """One 3-layer MLP (dim -> hidden -> hidden -> teacher_dim, SiLU) per aligned layer."""

    def __init__(self, count: int, dim: int, hidden: int, teacher_dim: int):
        super().__init__()
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, teacher_dim))
            for _ in range(count)
        )

    def forward(self, states: list[torch.Tensor]) -> list[torch.Tensor]:
        return [mlp(x) for mlp, x in zip(self.mlps, states)]


class RepaTerm:
    """Hooks, frozen teacher and projectors of one training run.

    `with term.collect(): render = model(...)` keeps the chosen layers' outputs of that forward pass
    (and only of it: evaluation passes and the recomputation under gradient checkpointing are not
    kept); `term.loss(target_images)` then returns the Smooth-L1 alignment loss, averaged over the
    layers. The projectors train with the model (`term.projector`); the teacher never does."""

    def __init__(self, spec: RepaSpec, model: nn.Module, image_size: int, device: torch.device, distributed: bool = False):
        self.spec = spec
        blocks, self.position = repa_tap(model)
        self.layers = resolve_layers(spec.layers, len(blocks))
        self.patch = model.config.patch_size
        self.teacher = load_teacher(spec.teacher, spec.weights).to(device)
        teacher_dim = self._probe(image_size, device)
        if spec.teacher_dim is not None and spec.teacher_dim != teacher_dim:
            raise ConfigError(f"train.repa.teacher_dim: {spec.teacher_dim}, but teacher {spec.teacher!r} returns {teacher_dim} channels")
        self.teacher_dim = teacher_dim
        self.projector = Projectors(len(self.layers), model.config.dim, spec.projector_hidden, teacher_dim).to(device)
        self._project: nn.Module = self.projector
        if distributed:  # projector gradients are averaged across ranks like the model's
            from torch.nn.parallel import DistributedDataParallel
            self._project = DistributedDataParallel(self.projector, device_ids=[device.index] if device.type == "cuda" else None)
        self._armed = False
        self._states: dict[int, list[torch.Tensor]] = {i: [] for i in self.layers}
        self._hooks = [blocks[i].register_forward_hook(functools.partial(self._keep, i)) for i in self.layers]

    @property
    def weight(self) -> float:
        return self.spec.weight

    @property
    def label(self) -> str:
        return f"{self.spec.weight:g}*repa({self.spec.teacher})"

    def _probe(self, image_size: int, device: torch.device) -> int:
        """The teacher's channel count, from one blank image at the training size."""
        try:
            with torch.no_grad():
                out = self.teacher(torch.zeros(1, 3, image_size, image_size, device=device))
        except Exception as error:  # noqa: BLE001  (the teacher's own code)
            raise ConfigError(f"train.repa.teacher {self.spec.teacher!r}: forward on a [1, 3, {image_size}, {image_size}] "
                              f"image failed ({type(error).__name__}: {error})") from None
        grid = (image_size // self.patch, image_size // self.patch)
        return teacher_tokens(out, grid, (image_size, image_size)).shape[-1]

    def _keep(self, index: int, _module: nn.Module, _args: Any, output: torch.Tensor) -> None:
        if self._armed:
            self._states[index].append(output)

    @contextlib.contextmanager
    def collect(self) -> Iterator[None]:
        for states in self._states.values():
            states.clear()
        self._armed = True
        try:
            yield
        finally:
            self._armed = False

    def hidden_states(self, index: int, batch: int, views: int, tokens: int) -> torch.Tensor:
        """Layer `index`'s target tokens, [batch*views, tokens, dim] in (batch, view) order (target
        chunks, each batch-ordered (batch, view), are put back in view order)."""
        parts = self._states[index]
        if not parts:
            raise RuntimeError(f"REPA: block {index} ran no forward pass inside `collect()`")
        pick = {"all": lambda s: s, "last": lambda s: s[:, -tokens:], "first": lambda s: s[:, :tokens]}[self.position]
        dim = parts[0].shape[-1]
        states = torch.cat([pick(s).reshape(batch, -1, tokens, dim) for s in parts], dim=1)
        if states.shape[1] != views:
            raise RuntimeError(f"REPA: block {index} produced {states.shape[1]} target views, expected {views}")
        return states.reshape(batch * views, tokens, dim)

    def loss(self, target_images: torch.Tensor) -> torch.Tensor:
        """Smooth-L1 between projected hidden states and teacher features of target_images [b, m, 3, h, w]."""
        b, m, _, h, w = target_images.shape
        grid = (h // self.patch, w // self.patch)
        with torch.no_grad():
            teacher = teacher_tokens(self.teacher(target_images.flatten(0, 1)), grid, (h, w))
        states = [self.hidden_states(i, b, m, grid[0] * grid[1]) for i in self.layers]
        for kept in self._states.values():
            kept.clear()
        projected = self._project(states)
        return torch.stack([F.smooth_l1_loss(p.float(), teacher) for p in projected]).mean()

    def close(self) -> None:
        """Remove the hooks (the model is returned to the caller without them)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


class RepaLoss:
    """REPA as an extra loss of the Trainer's step (`loop.ExtraLoss`): the term keeps the chosen layers'
    outputs of the step's forward pass and aligns them with the teacher's features of the batch's target
    images. Its projectors train with the model and travel in the run's checkpoints."""
    key = "repa_loss"
    title = "REPA projector"

    def __init__(self, spec: RepaSpec, model: nn.Module, image_size: int, device: torch.device, distributed: bool = False):
        self.term = RepaTerm(spec, model, image_size, device, distributed)
        self.weight, self.label = self.term.weight, self.term.label
        self.modules: dict[str, nn.Module] = {"repa_projector": self.term.projector}

    def capture(self) -> contextlib.AbstractContextManager[None]:
        return self.term.collect()

    def loss(self, model: nn.Module, batch: dict[str, Any], outputs: torch.Tensor) -> torch.Tensor:
        return self.term.loss(batch["target_images"])

    def close(self) -> None:
        self.term.close()
