"""One forward point (`model`, `n_input`, `n_target`, `batch`): its FLOPs counted on meta, then
the latency and peak memory of the forward pass on synthetic views (kinds `profile`, `profile_efficiency`)."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from .flops import FlopCounter
from .inputs import synthetic_views
from .measure import MeasureSettings, measure_call
from .spec import ModelCache, RunContext


def forward_measure(ctx: RunContext, settings: MeasureSettings) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """The sweep's `measure` for forward points; each model is built once and kept for later points."""
    counter, cache = FlopCounter(ctx.config), ModelCache(ctx.config, ctx.device)

    def measure(point: Mapping[str, Any]) -> dict[str, Any]:
        flops = counter.forward(point["model"], point["n_input"], point["n_target"], point["batch"])
        model = cache.get(point["model"])
        views = synthetic_views(point["batch"], point["n_input"], point["n_target"], ctx.image_size, ctx.device)
        return {"params": model.num_parameters(), **flops.columns(),
                **measure_call(lambda: model(*views), ctx.device, ctx.dtype, settings)}

    return measure
