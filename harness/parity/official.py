"""Running the official LVSM / Efficient-LVSM / LaCT code from a checkout the user names, beside ours.

Nothing of theirs lives in this repository: `official_code(dir)` imports their modules from the
checkout for the length of a `with` block and takes them out of `sys.modules` afterwards (both
repositories name their packages `model`, `utils` and `data`). On a machine without xformers their
attention calls go to a stand-in module of ours, installed only inside that block, that computes
`xformers.ops.memory_efficient_attention` with torch's scaled_dot_product_attention (no mask, no
dropout, scale 1/sqrt(head_dim)); Efficient-LVSM's training helpers import three learning-rate
schedulers from Hugging Face `transformers` at module level, which rendering never calls, and they
get a stand-in too when `transformers` is absent. LaCT's `torch.compile` decorators are taken off
(their functions run eagerly, as ours do; same numbers), and its Newton-Schulz step can be run in
float32 by their own function with `G.float()` in place of `G.bfloat16()` (`official_step`).

The official models are built from their own YAML with this project's sizes, their weights drawn by
their own initialisation and then perturbed (so no layer is near the identity), and the same weights
are loaded into ours through `models.load_official`.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
import yaml

from models import VariantConfig, list_models, load_official, model_card, model_class
from models.official import OfficialCode
from models.base import NVSModel

from ..errors import MissingResource


def official_variants() -> dict[str, OfficialCode]:
    """Every registered variant with an official release the parity kind can run, by name."""
    return {name: model_class(name).official_code for name in list_models()
            if model_class(name).official_code is not None and not model_card(name).ablation_of}


def repositories() -> dict[str, OfficialCode]:
    """Each official repository (GitHub owner/name) -> the spec of one variant it holds (for its checkout's layout)."""
    found: dict[str, OfficialCode] = {}
    for code in official_variants().values():
        found.setdefault(code.repository, code)
    return found


# Their top-level packages, and the stand-ins: all removed from sys.modules when a block ends.
THEIR_PACKAGES = ("model", "utils", "data", "process_data", "lact_ttt")
STAND_INS = ("xformers", "transformers")


# ---------------------------------------------------------------------------------- stand-ins


def _memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None, op=None):
    """xformers' [batch, tokens, heads, head_dim] attention through torch SDPA ([batch, heads, tokens, head_dim])."""
    if attn_bias is not None:
        raise ValueError(f"xformers stand-in: attn_bias={type(attn_bias).__name__} given; this SDPA route takes none, "
                         "as every official LVSM-family model calls it")
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    return F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=scale).transpose(1, 2)


def _xformers_stand_in() -> dict[str, types.ModuleType]:
    root, ops, fmha, flash = (types.ModuleType(n) for n in ("xformers", "xformers.ops", "xformers.ops.fmha",
                                                             "xformers.ops.fmha.flash"))
    flash.FwOp, flash.BwOp = "FwOp", "BwOp"  # only passed through as `op=`
    fmha.flash, ops.fmha, root.ops = flash, fmha, ops
    ops.memory_efficient_attention = _memory_efficient_attention
    return {"xformers": root, "xformers.ops": ops, "xformers.ops.fmha": fmha, "xformers.ops.fmha.flash": flash}


def _transformers_stand_in() -> dict[str, types.ModuleType]:
    module = types.ModuleType("transformers")

    def unavailable(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("transformers is not installed: its learning-rate schedulers are for training only")

    for name in ("get_constant_schedule_with_warmup", "get_cosine_schedule_with_warmup", "get_linear_schedule_with_warmup"):
        setattr(module, name, unavailable)
    return {"transformers": module}


def stand_ins() -> tuple[dict[str, types.ModuleType], list[str]]:
    """The stand-in modules this machine needs, and their names for the report."""
    modules, used = {}, []
    if importlib.util.find_spec("xformers") is None:
        modules.update(_xformers_stand_in())
        used.append("xformers -> torch SDPA")
    if importlib.util.find_spec("transformers") is None:
        modules.update(_transformers_stand_in())
        used.append("transformers schedulers (unused)")
    return modules, used


def _ours(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in THEIR_PACKAGES + STAND_INS)


def check_checkout(checkout: str | Path, repository: str) -> Path:
    """The checkout's folder their modules import from, or one line naming what is missing."""
    checkout = Path(checkout).resolve()
    code = repositories()[repository]
    root = checkout / code.root
    if not (root / code.marker).exists():
        raise MissingResource(f"{code.variable}={checkout}: not a checkout of {repository} (no {Path(code.root) / code.marker}); "
                              f"clone https://github.com/{repository} and give its folder")
    return root


@contextlib.contextmanager
def official_code(checkout: str | Path, repository: str) -> Iterator[Callable[[str], types.ModuleType]]:
    """`with official_code(dir, "Haian-Jin/LVSM") as load: load("model.LVSM_scene_decoder_only")`: their
    modules, importable from the checkout only inside the block."""
    checkout = check_checkout(checkout, repository)
    clashing = sorted(name for name in sys.modules if _ours(name))
    if clashing:
        raise RuntimeError(f"modules {clashing[:3]} are already imported; the official code's packages would clash")
    saved_path = list(sys.path)
    modules, _ = stand_ins()
    sys.modules.update(modules)
    sys.path.insert(0, str(checkout))
    try:
        yield _eager(importlib.import_module) if repositories()[repository].compiled else importlib.import_module
    finally:
        sys.path[:] = saved_path  # Efficient-LVSM appends its checkout to sys.path on import
        for name in [n for n in sys.modules if _ours(n)]:
            del sys.modules[name]


def _eager(load: Callable[[str], types.ModuleType]) -> Callable[[str], types.ModuleType]:
    """`load` with each `@torch.compile` function of the loaded module replaced by the function it wraps."""
    def load_eager(name: str) -> types.ModuleType:
        module = load(name)
        for attribute, value in list(vars(module).items()):
            original = getattr(value, "_torchdynamo_orig_callable", None)
            if callable(original):
                setattr(module, attribute, original)
        return module
    return load_eager


# --------------------------------------------------------------------------------- the models


def official_config(checkout: Path, variant: str, config: VariantConfig, n_input: int, n_target: int) -> dict[str, Any]:
    """Their YAML with our sizes, rendering only (the variant's `OfficialCode.yaml`)."""
    code = official_variants()[variant]
    path = checkout / code.config
    if not path.is_file():
        raise MissingResource(f"{path}: the official config of {variant} is missing from the checkout")
    return code.yaml(yaml.safe_load(path.read_text()), config, n_input, n_target)


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Move every weight off its initialisation (norm scales near 1, projections by 0.02 N(0,1)), so a
    mistake in any layer shows in the render."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and p.dim() == 1:
                p.copy_(1 + 0.1 * noise)
            else:
                p.add_(0.02 * noise)


@dataclass
class Pair:
    """The official model and ours with the same weights, and how to call each on one batch."""
    variant: str
    official: torch.nn.Module
    ours: NVSModel
    config: dict[str, Any]

    def official_call(self, views: tuple[torch.Tensor, ...]) -> Callable[[], torch.Tensor]:
        return official_variants()[self.variant].render(self.official, views)

    def our_call(self, views: tuple[torch.Tensor, ...]) -> Callable[[], torch.Tensor]:
        return lambda: self.ours(*views)


def build_pair(load: Callable[[str], types.ModuleType], checkout: Path, variant: str, config: VariantConfig,
               n_input: int, n_target: int, seed: int = 0) -> Pair:
    """The official model built from its YAML with our sizes and seed `seed`, perturbed, and ours
    loaded from its state dict."""
    code = official_variants()[variant]
    data = official_config(checkout, variant, config, n_input, n_target)
    torch.manual_seed(seed)
    official = code.build(load, data)
    official.eval()  # their train() override returns None: no chaining
    official.requires_grad_(False)
    _perturb(official, seed + 1)
    state = {k: v for k, v in official.state_dict().items() if not k.startswith("loss_computer.")}
    ours = load_official(variant, data["model"] if code.config_from_yaml else None, state).eval()
    return Pair(variant, official, ours.requires_grad_(False), data)
