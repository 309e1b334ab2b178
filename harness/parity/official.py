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
import copy
import importlib
import importlib.util
import inspect
import math
import sys
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
import yaml

from models import ModelConfig, load_official
from models.base import NVSModel

from ..errors import MissingResource


def rays_bmm_flops(model: NVSModel, n: int, m: int, batch: int, image_size: int) -> int:
    """The official LVSM-family code rotates each pixel's ray direction with a batched 3x3 matmul (18 FLOPs
    per pixel per view, which FlopCounterMode counts); ours rotates them elementwise (which it does not)."""
    return 18 * batch * (n + m) * image_size ** 2


def lact_extra_flops(model: NVSModel, n: int, m: int, batch: int, image_size: int) -> int:
    """What the official LaCT forward executes beyond ours (its rays are a bmm in both): it tokenizes target
    views with all 12 channels (the image ones zero) where ours reads the 9 pose columns; computes keys,
    values and learning rates for target tokens, which need only queries; and in its last block applies the
    fast weights, output projection and MLP to the input tokens, whose outputs nothing reads."""
    c = model.config
    p = model.view_tokens(image_size)
    targets, inputs = batch * m * p, batch * n * p
    tokenizer = targets * 3 * c.patch_size ** 2 * c.dim
    target_keys_values_rates = c.depth * targets * (2 * c.dim * c.dim + 3 * c.fast_weight_heads * c.dim)
    return 2 * (tokenizer + target_keys_values_rates + model._apply_flops(inputs).macs)


@dataclass(frozen=True)
class Variant:
    """Where a variant lives in its official repository, and what its forward executes beyond ours."""
    repository: str  # "lvsm", "efficient_lvsm" or "lact": which checkout holds it
    config: str  # its YAML, relative to the checkout
    root: str = ""  # the folder of the checkout its modules import from
    marker: str = "model"  # what that folder holds (a package or a module)
    extra_flops: Callable[[NVSModel, int, int, int, int], int] = rays_bmm_flops  # (ours, N, M, batch, image size)


VARIANTS: dict[str, Variant] = {
    "lvsm_decoder_only": Variant("lvsm", "configs/LVSM_scene_decoder_only.yaml"),
    "lvsm_encoder_decoder": Variant("lvsm", "configs/LVSM_scene_encoder_decoder.yaml"),
    "efficient_lvsm": Variant("efficient_lvsm", "configs/Efficient-LVSM.yaml"),
    "lact": Variant("lact", "lact_nvs/config/lact_l24_d768_ttt2x.yaml", root="lact_nvs", marker="model.py",
                    extra_flops=lact_extra_flops),
}
# Each repository's environment variable in `make parity`, and its public name.
CHECKOUTS = {"lvsm": ("OFFICIAL_LVSM", "Haian-Jin/LVSM"), "efficient_lvsm": ("OFFICIAL_EFFICIENT_LVSM", "Ayakaee/Efficient-LVSM"),
             "lact": ("OFFICIAL_LACT", "a1600012888/LaCT")}
# Their top-level packages, and the stand-ins: all removed from sys.modules when a block ends.
THEIR_PACKAGES = ("model", "utils", "data", "process_data", "lact_ttt")
STAND_INS = ("xformers", "transformers")


# ---------------------------------------------------------------------------------- stand-ins


class AttrDict(dict):
    """What the official code asks of its EasyDict configs (nested attribute access, `.get`), for
    machines without easydict; the real one is used where installed."""

    def __init__(self, data: dict[str, Any]):
        super().__init__({k: AttrDict(v) if isinstance(v, dict) else v for k, v in data.items()})

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def config_dict(data: dict[str, Any]) -> Any:
    try:
        from easydict import EasyDict
    except ImportError:
        return AttrDict(copy.deepcopy(data))
    return EasyDict(copy.deepcopy(data))


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
    variant = next(v for v in VARIANTS.values() if v.repository == repository)
    root = checkout / variant.root
    if not (root / variant.marker).exists():
        variable, name = CHECKOUTS[repository]
        raise MissingResource(f"{variable}={checkout}: not a checkout of {name} (no {Path(variant.root) / variant.marker}); "
                              f"clone https://github.com/{name} and give its folder")
    return root


@contextlib.contextmanager
def official_code(checkout: str | Path, repository: str = "lvsm") -> Iterator[Callable[[str], types.ModuleType]]:
    """`with official_code(dir) as load: load("model.efficient_lvsm")`: their modules, importable from
    the checkout only inside the block."""
    checkout = check_checkout(checkout, repository)
    clashing = sorted(name for name in sys.modules if _ours(name))
    if clashing:
        raise RuntimeError(f"modules {clashing[:3]} are already imported; the official code's packages would clash")
    saved_path = list(sys.path)
    modules, _ = stand_ins()
    sys.modules.update(modules)
    sys.path.insert(0, str(checkout))
    try:
        yield _eager(importlib.import_module) if repository == "lact" else importlib.import_module
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


NEWTON_SCHULZ_FUNCTION, BFLOAT16_CAST = "zeropower_via_newtonschulz5", "G.bfloat16()"


@contextlib.contextmanager
def official_step(load: Callable[[str], types.ModuleType], dtype: torch.dtype) -> Iterator[None]:
    """LaCT's official Newton-Schulz step in `dtype` for the block: bfloat16 as released, or float32 by
    their own function's source with `G.float()` in place of `G.bfloat16()` (the reference fixtures'
    `render_ns_float32` were made the same way)."""
    module = load("lact_ttt")
    original = getattr(module, NEWTON_SCHULZ_FUNCTION)
    if dtype == torch.bfloat16:
        yield
        return
    source = textwrap.dedent(inspect.getsource(original))
    if BFLOAT16_CAST not in source:
        raise MissingResource(f"{module.__file__}: {NEWTON_SCHULZ_FUNCTION} no longer casts with {BFLOAT16_CAST}; "
                              "this checkout is not the LaCT code the float32 step was defined for")
    source = "\n".join(line for line in source.replace(BFLOAT16_CAST, "G.float()").splitlines() if not line.startswith("@"))
    namespace: dict[str, Any] = dict(vars(module))
    exec(compile(source, module.__file__, "exec"), namespace)  # noqa: S102  (their function, one cast changed)
    setattr(module, NEWTON_SCHULZ_FUNCTION, namespace[NEWTON_SCHULZ_FUNCTION])
    try:
        yield
    finally:
        setattr(module, NEWTON_SCHULZ_FUNCTION, original)


# --------------------------------------------------------------------------------- the models


def official_config(checkout: Path, variant: str, config: ModelConfig, n_input: int, n_target: int) -> dict[str, Any]:
    """Their YAML with our sizes, rendering only: no loss networks, no REPA, no gradient checkpoints."""
    path = checkout / VARIANTS[variant].config
    if not path.is_file():
        raise MissingResource(f"{path}: the official config of {variant} is missing from the checkout")
    data = yaml.safe_load(path.read_text())
    if VARIANTS[variant].repository == "lact":
        return _lact_config(data, config)
    model, training = data["model"], data["training"]
    for tokenizer in ("image_tokenizer", "target_pose_tokenizer"):
        model[tokenizer].update(image_size=config.image_size, patch_size=config.patch_size)
    transformer = model["transformer"]
    transformer.update(d=config.dim, d_head=config.head_dim, use_qk_norm=config.qk_norm)
    if variant == "lvsm_decoder_only":
        transformer["n_layer"] = config.depth
    elif variant == "lvsm_encoder_decoder":
        transformer.update(encoder_n_layer=config.encoder_depth, decoder_n_layer=config.decoder_depth,
                           n_latent_vectors=config.n_latents)
    else:
        transformer["n_layer"] = config.stream_depth
        model["image_tokenizer"]["type"] = "none"
        training["enable_repa"] = False
    training.update(lpips_loss_weight=0.0, perceptual_loss_weight=0.0, num_input_views=n_input, num_target_views=n_target,
                    num_views=n_input + n_target, target_has_input=False, grad_checkpoint_every=1)
    data.setdefault("inference", {})["if_inference"] = False
    return data


def _lact_config(data: dict[str, Any], config: ModelConfig) -> dict[str, Any]:
    """LaCT's flat YAML (patch_size, dim, layers, block_config: attention, fast weights, MLP) with our sizes."""
    data.update(patch_size=config.patch_size, dim=config.dim, layers=config.depth)
    for module in data["block_config"]:
        params = module["params"]
        if "use_qk_norm" in params:
            params.update(head_dim=config.head_dim, use_qk_norm=config.qk_norm)
        elif "muon_update_steps" in params:
            params.update(head_dim=config.dim // config.fast_weight_heads, inter_multi=config.fast_weight_ratio)
        else:
            params.update(inter_multi=config.mlp_ratio)
    return {"model": data}


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
        images, in_c2w, in_k, tgt_c2w, tgt_k = views
        if VARIANTS[self.variant].repository == "lact":  # it writes its rays into the dicts: fresh ones per call
            return lambda: self.official({"image": images, "c2w": in_c2w, "fxfycxcy": in_k}, {"c2w": tgt_c2w, "fxfycxcy": tgt_k})
        batch = {"image": images, "c2w": torch.cat([in_c2w, tgt_c2w], 1), "fxfycxcy": torch.cat([in_k, tgt_k], 1)}
        model = self.official
        if self.variant == "efficient_lvsm":
            def call() -> torch.Tensor:
                inputs, targets = model.process_data(batch, has_target_image=False, target_has_input=False, compute_rays=True)
                return model(inputs, targets, has_target_image=False, train=False).render
        else:
            def call() -> torch.Tensor:
                return model(batch, has_target_image=False).render
        return call

    def our_call(self, views: tuple[torch.Tensor, ...]) -> Callable[[], torch.Tensor]:
        return lambda: self.ours(*views)


def build_pair(load: Callable[[str], types.ModuleType], checkout: Path, variant: str, config: ModelConfig,
               n_input: int, n_target: int, seed: int = 0) -> Pair:
    """The official model built from its YAML with our sizes and seed `seed`, perturbed, and ours
    loaded from its state dict."""
    data = official_config(checkout, variant, config, n_input, n_target)
    torch.manual_seed(seed)
    if VARIANTS[variant].repository == "lact":
        load("lact_ttt")  # its block list names classes by module: loaded (and made eager) before the model
        model = data["model"]
        official = load("model").LaCTLVSM(model["patch_size"], model["dim"], model["layers"], model["block_config"])
    else:
        module_name, _, class_name = data["model"]["class_name"].rpartition(".")
        official = getattr(load(module_name), class_name)(config_dict(data))
    official.eval()  # their train() override returns None: no chaining
    official.requires_grad_(False)
    _perturb(official, seed + 1)
    state = {k: v for k, v in official.state_dict().items() if not k.startswith("loss_computer.")}
    # LaCT's YAML holds its block list, which no key of ours reads: its sizes come from the weights alone.
    ours = load_official(variant, None if VARIANTS[variant].repository == "lact" else data["model"], state).eval()
    return Pair(variant, official, ours.requires_grad_(False), data)
