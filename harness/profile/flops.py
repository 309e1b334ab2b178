"""Forward FLOPs counted by `torch.utils.flop_counter.FlopCounterMode` on the meta device.

Meta tensors carry shapes only, so even the paper preset at N=64 costs nothing to count. On meta,
`scaled_dot_product_attention` runs through kernels FlopCounterMode has formulas for, so attention
is counted (on a real CPU the default SDPA kernel is not). The count is set beside the model's
analytic formula (`model.analytic_flops`, 2 FLOPs per multiply-add); they must agree.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from models import ModelConfig, build_model
from models.base import NVSModel
from models.flops import FlopEstimate

from .inputs import input_views, synthetic_views, target_views


@dataclass(frozen=True)
class FlopCount:
    counted: int  # FlopCounterMode's total, FLOPs (2 per multiply-add)
    analytic: FlopEstimate

    @property
    def relative_difference(self) -> float:
        return abs(self.counted - self.analytic.flops) / max(self.analytic.flops, 1)

    def columns(self) -> dict[str, float]:
        return {
            "gflops": self.counted / 1e9,
            "gflops_analytic": self.analytic.flops / 1e9,
            "gmacs_linear_thop": self.analytic.linear_macs / 1e9,
            "gmacs_attention": self.analytic.attention_macs / 1e9,
            "flops_rel_diff": self.relative_difference,
        }


def _count(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


class FlopCounter:
    """Counts the forward FLOPs of the variants at one model config; models are built once, on meta."""

    def __init__(self, config: ModelConfig):
        self.config = config
        self._models: dict[str, NVSModel] = {}

    def model(self, name: str) -> NVSModel:
        if name not in self._models:
            with torch.device("meta"):
                self._models[name] = build_model(name, self.config).eval()
        return self._models[name]

    def forward(self, name: str, n_input: int, n_target: int, batch: int = 1) -> FlopCount:
        model, size = self.model(name), self.config.image_size
        views = synthetic_views(batch, n_input, n_target, size, "meta")
        return FlopCount(_count(lambda: model(*views)), model.analytic_flops(n_input, n_target, batch, size))

    def incremental(self, name: str, n_cached: int, n_new: int, n_target: int, batch: int = 1) -> FlopCount:
        """Adding `n_new` views to a KV cache of `n_cached` views, then rendering `n_target` views."""
        model, size = self.model(name), self.config.image_size
        renderer = model.incremental(*target_views(batch, n_target, size, "meta"), size, size)
        with torch.no_grad():
            renderer.add_views(*input_views(batch, n_cached, size, "meta"))
        new = input_views(batch, n_new, size, "meta", seed=7)
        counted = _count(lambda: renderer.add_views(*new).render())
        analytic = (model.input_stream_flops(n_new, batch, size)
                    + model.target_stream_flops(n_cached + n_new, n_target, batch, size))
        return FlopCount(counted, analytic)
