"""One measured call: warm-up, then timed runs with the peak memory taken over them, under
`torch.no_grad()` and the requested autocast dtype."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..runtime import autocast
from .memory import PeakMemory
from .timing import planned_runs, timed_runs, warm_up


@dataclass(frozen=True)
class MeasureSettings:
    warmup: int = 3
    runs: int = 20
    # Optional per-point time budget (seconds): points whose runs would overrun it make fewer timed
    # runs, never under `min_runs`; the row records how many were made.
    min_runs: int = 5
    time_budget_s: float | None = None

    def key(self) -> dict[str, Any]:
        return {"warmup": self.warmup, "runs": self.runs, "min_runs": self.min_runs, "time_budget_s": self.time_budget_s}


def measure_call(fn: Callable[[], Any], device: torch.device, dtype: str, settings: MeasureSettings) -> dict[str, Any]:
    def step() -> Any:
        with torch.no_grad(), autocast(device, dtype):
            return fn()

    warm_budget = None if settings.time_budget_s is None else settings.time_budget_s / 4
    warmed, last_ms = warm_up(step, device, settings.warmup, warm_budget)
    runs = planned_runs(last_ms, settings.runs, settings.min_runs, settings.time_budget_s)
    with PeakMemory(device) as memory:
        stats = timed_runs(step, device, runs, warmed)
    return {**stats.columns(), **memory.columns}
