"""What every variant shares: the call contract, its input checks and the bookkeeping around it."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, ContextManager, Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import VariantConfig
if TYPE_CHECKING:
    from .official import OfficialCode
from .prope import CameraTransforms, view_cameras
from .tokens import INPUT_CHANNELS, Tokenizer, input_view_features, raymaps, target_view_features, token_channels


def _expect_shape(tensor: torch.Tensor, name: str, expected: tuple) -> None:
    """`expected` holds ints, or None for a free dimension; the message spells it out."""
    shape = tuple(tensor.shape)
    ok = len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected))
    if not ok:
        spelled = ", ".join("*" if e is None else str(e) for e in expected)
        raise ValueError(f"{name}: expected shape [{spelled}], got {list(shape)}")


def expect_finite(tensor: torch.Tensor, name: str) -> None:
    """Refuse NaN/Inf in a camera tensor: one bad number spreads through the rays to every pixel of
    the render (and through scene normalisation to every view), so it would pass as a plain bad score.

    CPU tensors are checked at once. On an accelerator, reading the answer back would synchronise the
    device inside the timed forward pass, so the check is queued on the device instead
    (`_assert_async`): it fails at the next synchronisation, and like any device-side assert it
    leaves that CUDA context unusable; torch.compile traces the same queued form. Meta tensors
    (FLOP counting) hold no values."""
    if tensor.device.type == "meta" or not tensor.is_floating_point():
        return
    message = f"{name}: expected finite values, got NaN or Inf"
    if tensor.device.type == "cpu" and not torch.compiler.is_compiling():
        if not bool(torch.isfinite(tensor).all()):
            bad = (~torch.isfinite(tensor)).nonzero()[0].tolist()
            raise ValueError(f"{message} (first at index {bad})")
    else:
        torch._assert_async(torch.isfinite(tensor).all(), message)


# What a variant may offer beyond the call contract (NVSModel.capabilities), and what each means.
CAPABILITIES = {
    "scene_state": "a scene state that saves work (`encode_scene` once, `render_scene` per target)",
    "incremental_views": "an exact cache that input views are added to one at a time (`incremental`)",
    "extend_scene": "an approximate update of a scene state with more input views (`extend_scene`)",
    "official_weights": "conversion of the official release's checkpoints (`load_official`)",
    "analytic_flops": "a closed-form FLOP count (`analytic_flops`) equal to FlopCounterMode's",
}


@dataclass(frozen=True)
class SceneState:
    """What `encode_scene` built from a scene's input views, for `render_scene` to render from.
    `content` is the variant's own (latent tokens, per-layer keys and values, or, for a variant with
    no scene state, the input views themselves); the rest says which variant built it and for what
    views, so that a state is never rendered by another variant or at another size."""
    variant: str
    batch: int
    views: int
    height: int
    width: int
    content: Any


class NVSModel(nn.Module):
    """Base class of the LVSM family.

    Call contract: `model(input_images [b,n,3,h,w] in [0,1], input_c2w [b,n,4,4] OpenCV,
    input_fxfycxcy [b,n,4] pixels, target_c2w [b,m,4,4], target_fxfycxcy [b,m,4]) -> [b,m,3,h,w]`.

    Encode once, render many: `state = model.encode_scene(input_images, input_c2w, input_fxfycxcy)`,
    then `model.render_scene(state, target_c2w, target_fxfycxcy)` for any number of target views, equal
    to the plain call. `scene_state` says what the state holds; None: the variant has none (its input
    tokens depend on the target view), so the state holds the input views and every render recomputes
    the whole forward pass.
    """

    name: ClassVar[str] = ""
    # (regex, replacement) pairs mapping the official state-dict keys onto ours, applied in order.
    official_key_map: ClassVar[list[tuple[str, str]]] = []
    # Config depth field -> the state-dict prefix of the blocks it counts (read by `load_official`).
    depth_fields: ClassVar[dict[str, str]] = {}
    # Channels per pixel of an input view's token features (read by `load_official` to find the patch size).
    input_channels: ClassVar[int] = INPUT_CHANNELS
    # Where the target views' hidden states are (read by representation alignment, REPA): the module
    # list whose blocks output them, and where they sit in each block's output: "all" (the output is
    # the target tokens), "last" / "first" (the last / first P tokens of each sequence). None: nowhere.
    target_states: ClassVar[tuple[str, Literal["all", "last", "first"]] | None] = None
    # What `encode_scene` keeps of the input views, in words; None: nothing (renders recompute everything).
    scene_state: ClassVar[str | None] = None
    # What the variant offers beyond the call contract, declared here and read by the kinds (never
    # probed with hasattr): names from CAPABILITIES. `not_offered`: capability -> why not, where a
    # reader would expect it (an ablation of a variant that offers it).
    capabilities: ClassVar[frozenset[str]] = frozenset()
    not_offered: ClassVar[dict[str, str]] = {}
    # The `camera_encoding` values the variant implements (config.CAMERA_ENCODINGS).
    camera_encodings: ClassVar[tuple[str, ...]] = ("plucker",)
    # Its official code, for the parity kind (with "official_weights"); None: no official release.
    official_code: ClassVar["OfficialCode | None"] = None

    def __init__(self, config: VariantConfig):
        super().__init__()
        self.config = config
        # Built first, so that each variant's own modules draw their initial weights after them.
        self.build_tokenizers(config)
        self.gradient_checkpointing = False
        # How many input views (per batch element) have gone through the input encoder; lets tests
        # verify that incremental inference never re-encodes a view.
        self.input_views_encoded = 0

    @classmethod
    def offers(cls, capability: str) -> bool:
        if capability not in CAPABILITIES:
            raise KeyError(f"unknown capability {capability!r}; known: {', '.join(CAPABILITIES)}")
        return cls.scene_state is not None if capability == "scene_state" else capability in cls.capabilities

    @classmethod
    def require(cls, capability: str) -> None:
        """Refuse, in one line, a use of a capability this variant does not offer."""
        if not cls.offers(capability):
            why = cls.not_offered.get(capability, "not implemented for this variant")
            raise TypeError(f"{cls.name}: {CAPABILITIES[capability]} is not offered: {why}")

    @classmethod
    def check_config(cls, config: VariantConfig) -> None:
        """Refuse a config this variant cannot honour (beyond the config class's own checks)."""
        if config.camera_encoding not in cls.camera_encodings:
            raise ValueError(f"model {cls.name!r}: camera_encoding {config.camera_encoding!r} is not implemented; "
                             f"it offers {', '.join(cls.camera_encodings)}")

    def build_tokenizers(self, config: VariantConfig) -> None:
        """`input_tokenizer` (image and camera channels) and `target_tokenizer` (camera channels) per
        patch, as the LVSM family tokenizes; a variant tokenizing otherwise overrides this."""
        inputs, targets = token_channels(config.camera_encoding)
        self.input_tokenizer = Tokenizer(inputs, config.patch_size, config.dim)
        self.target_tokenizer = Tokenizer(targets, config.patch_size, config.dim)

    def portable_numerics(self) -> ContextManager:
        """A context in which this model computes with numerics every CPU reproduces (fixtures and parity
        are compared there); most variants always do."""
        return contextlib.nullcontext()

    def numerics(self, device: torch.device | str) -> dict[str, str]:
        """Precision choices that change this model's numbers on `device` beyond its dtype (recorded in
        every row that times or scores it); empty where there are none."""
        return self.numerics_of(self.config, device)

    @classmethod
    def numerics_of(cls, config: VariantConfig, device: torch.device | str) -> dict[str, str]:
        """`numerics` of a model of this variant with `config`, without building it."""
        return {}

    def count_encoded_views(self, n: int) -> None:
        """Count n input views as encoded. Not under torch.compile: an int attribute that changes on
        every call is a guard that fails on every call, so the compiled model would recompile each
        forward until it hit the recompile limit and silently ran eagerly."""
        if not torch.compiler.is_compiling():
            self.input_views_encoded += n

    def check_views(self, input_images, input_c2w, input_fxfycxcy, target_c2w, target_fxfycxcy) -> tuple[int, int, int, int, int]:
        b, n, h, w = self.check_inputs(input_images, input_c2w, input_fxfycxcy)
        m = self.check_targets(target_c2w, target_fxfycxcy, b)
        return b, n, m, h, w

    def check_inputs(self, input_images, input_c2w, input_fxfycxcy) -> tuple[int, int, int, int]:
        """Input views' shapes and finite cameras; returns b, n, h, w."""
        if input_images.dim() != 5 or input_images.shape[2] != 3:
            raise ValueError(f"input_images: expected shape [b, n, 3, h, w], got {list(input_images.shape)}")
        b, n, _, h, w = input_images.shape
        p = self.config.patch_size
        if h % p or w % p:
            raise ValueError(f"input_images: height and width must be divisible by the patch size {p}, got {h}x{w}")
        _expect_shape(input_c2w, "input_c2w", (b, n, 4, 4))
        _expect_shape(input_fxfycxcy, "input_fxfycxcy", (b, n, 4))
        self.check_cameras(input_c2w, input_fxfycxcy, "input_c2w", "input_fxfycxcy")
        return b, n, h, w

    def check_targets(self, target_c2w, target_fxfycxcy, b: int) -> int:
        """Target cameras' shapes (batch b) and finite values; returns m."""
        if target_c2w.dim() != 4:
            raise ValueError(f"target_c2w: expected shape [{b}, m, 4, 4], got {list(target_c2w.shape)}")
        m = target_c2w.shape[1]
        _expect_shape(target_c2w, "target_c2w", (b, m, 4, 4))
        _expect_shape(target_fxfycxcy, "target_fxfycxcy", (b, m, 4))
        self.check_cameras(target_c2w, target_fxfycxcy, "target_c2w", "target_fxfycxcy")
        return m

    @staticmethod
    def check_cameras(c2w: torch.Tensor, fxfycxcy: torch.Tensor, c2w_name: str, fxfycxcy_name: str) -> None:
        """Cameras must be finite (shapes are checked by the caller)."""
        expect_finite(c2w, c2w_name)
        expect_finite(fxfycxcy, fxfycxcy_name)

    # --- encode once, render many ----------------------------------------------------------
    def encode_scene(self, input_images, input_c2w, input_fxfycxcy, **options) -> SceneState:
        """The scene state of the input views (see the class docstring); checked as the forward pass checks them.
        `options` go to the variant's `build_scene` (e.g. what else its state should keep)."""
        b, n, h, w = self.check_inputs(input_images, input_c2w, input_fxfycxcy)
        return SceneState(type(self).name, b, n, h, w, self.build_scene(input_images, input_c2w, input_fxfycxcy, **options))

    def render_scene(self, state: SceneState, target_c2w, target_fxfycxcy) -> torch.Tensor:
        """Render target views [b, m, ...] from `state` -> [b, m, 3, h, w], at the input views' size."""
        self.check_own_state(state, "render_scene")
        self.check_targets(target_c2w, target_fxfycxcy, state.batch)
        return self.render_from_scene(state.content, target_c2w, target_fxfycxcy, state.height, state.width)

    def check_own_state(self, state: Any, caller: str) -> None:
        """A state must come from this variant's `encode_scene`."""
        if not isinstance(state, SceneState) or state.variant != type(self).name:
            built = state.variant if isinstance(state, SceneState) else type(state).__name__
            raise TypeError(f"{type(self).name}: {caller} needs a scene state from this variant's encode_scene, got {built}")

    def build_scene(self, input_images, input_c2w, input_fxfycxcy) -> Any:
        """A variant's scene-state content; without one (`scene_state` None), the input views themselves."""
        return (input_images, input_c2w, input_fxfycxcy)

    def render_from_scene(self, content: Any, target_c2w, target_fxfycxcy, height: int, width: int) -> torch.Tensor:
        """Render from `build_scene`'s content; without a scene state, the whole forward pass again."""
        return self(*content, target_c2w, target_fxfycxcy)

    def run_block(self, block: Callable, *args):
        """Run one block, through activation checkpointing when training with it enabled."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def render_target_sequences(self, shared: torch.Tensor, targets: torch.Tensor, norm: nn.Module, blocks: nn.ModuleList,
                                targets_first: bool, chunk: int | None, height: int, width: int,
                                cameras: Callable[[int, int], Any] | None = None) -> torch.Tensor:
        """LVSM's per-target rendering: one sequence per target view, [shared ; target] (or
        [target ; shared]), batch-ordered (batch, target view), through `norm` and `blocks`, then
        the head on the target tokens. shared: [b, S, d]; targets: [b, m, P, d] -> [b, m, 3, h, w].
        Chunks of `chunk` target views bound the memory; the result does not depend on it. `cameras`
        (start, views) -> the chunk's sequences' camera transforms, for attention with PRoPE / GTA."""
        b, m, p, d = targets.shape
        chunk = chunk or m
        renders = []
        for start in range(0, m, chunk):
            part = targets[:, start:start + chunk]
            views = part.shape[1]
            context = shared.unsqueeze(1).expand(b, views, -1, d)
            seq = torch.cat([part, context] if targets_first else [context, part], dim=2).reshape(b * views, -1, d)
            seq = norm(seq)
            transforms = (cameras(start, views),) if cameras is not None else ()
            for block in blocks:
                seq = self.run_block(block, seq, *transforms)
            out = seq[:, :p] if targets_first else seq[:, -p:]
            renders.append(self.head(out, height, width).reshape(b, views, 3, height, width))
        return torch.cat(renders, dim=1)

    def input_tokens(self, images: torch.Tensor, c2w: torch.Tensor, fxfycxcy: torch.Tensor) -> torch.Tensor:
        """Input views [b, n, ...] -> tokens [b*n, P, dim]."""
        return self.input_tokenizer(input_view_features(images, c2w, fxfycxcy, raymaps(self.config.camera_encoding)))

    def target_tokens(self, c2w: torch.Tensor, fxfycxcy: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Target cameras [b, m, ...] -> tokens [b*m, P, dim]."""
        return self.target_tokenizer(target_view_features(c2w, fxfycxcy, height, width, raymaps(self.config.camera_encoding)))

    def sequence_tokens(self, input_images, input_c2w, input_fxfycxcy, target_c2w, target_fxfycxcy
                        ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """For models that render each target view in its own sequence: check the views, count the
        inputs as encoded, and return input tokens [b, n*P, dim] (a batch element's views in one row),
        target tokens [b, m, P, dim], and the image height and width."""
        b, n, m, h, w = self.check_views(input_images, input_c2w, input_fxfycxcy, target_c2w, target_fxfycxcy)
        self.count_encoded_views(n)
        d = self.config.dim
        inputs = self.input_tokens(input_images, input_c2w, input_fxfycxcy).reshape(b, -1, d)
        return inputs, self.target_tokens(target_c2w, target_fxfycxcy, h, w).reshape(b, m, -1, d), h, w

    def analytic_flops(self, n_input: int, n_target: int, batch: int = 1, image_size: int | None = None):
        """Forward FLOPs in closed form (models.flops.FlopEstimate); a variant offering "analytic_flops" overrides it."""
        self.require("analytic_flops")

    def view_transforms(self, c2w: torch.Tensor, fxfycxcy: torch.Tensor, height: int, width: int) -> CameraTransforms:
        """PRoPE / GTA transforms of views given as OpenCV c2w [s, k, 4, 4] and fx, fy, cx, cy [s, k, 4]: one
        row per sequence, its k views in order, at this model's camera encoding, patch and head width."""
        c, p = self.config, self.config.patch_size
        return CameraTransforms.of_views(*view_cameras(c2w, fxfycxcy, c.camera_encoding), width // p, height // p,
                                         width, height, c.head_dim)

    def view_tokens(self, image_size: int | None) -> int:
        size = image_size or self.config.image_size
        return (size // self.config.patch_size) ** 2

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
