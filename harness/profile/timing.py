"""Latency of one callable: warm-up, then timed runs; median and inter-quartile range.

CUDA runs are timed with CUDA events (kernels are asynchronous; host clocks would time the launch,
not the work); CPU runs with `time.perf_counter`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch


@dataclass(frozen=True)
class LatencyStats:
    median_ms: float
    q1_ms: float
    q3_ms: float
    runs: int
    warmup: int

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    @classmethod
    def from_samples(cls, samples_ms: list[float], warmup: int) -> "LatencyStats":
        q1, median, q3 = np.percentile(np.asarray(samples_ms, dtype=float), [25, 50, 75])
        return cls(float(median), float(q1), float(q3), len(samples_ms), warmup)

    def columns(self) -> dict[str, float | int]:
        return {"latency_ms": self.median_ms, "latency_iqr_ms": self.iqr_ms, "latency_q1_ms": self.q1_ms,
                "latency_q3_ms": self.q3_ms, "runs": self.runs, "warmup": self.warmup}


def time_once_ms(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))
    begin = time.perf_counter()
    fn()
    return (time.perf_counter() - begin) * 1e3


def warm_up(fn: Callable[[], Any], device: torch.device, runs: int, budget_s: float | None = None) -> tuple[int, float]:
    """Run `fn` up to `runs` times (at least once, which also compiles lazily built kernels), stopping
    early once the warm-up has used `budget_s`. Returns (runs made, last run's ms)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    done, spent_ms, last_ms = 0, 0.0, 0.0
    while done < max(runs, 1):
        last_ms = time_once_ms(fn, device)
        spent_ms += last_ms
        done += 1
        if budget_s is not None and spent_ms / 1e3 >= budget_s:
            break
    return done, last_ms


def planned_runs(last_ms: float, runs: int, min_runs: int, budget_s: float | None) -> int:
    """`runs` timed runs, or fewer (never under `min_runs`) when they would overrun `budget_s`."""
    if budget_s is None or last_ms <= 0:
        return runs
    affordable = int(budget_s * 1e3 // last_ms)
    return max(min(runs, affordable), min(min_runs, runs))


def timed_runs(fn: Callable[[], Any], device: torch.device, runs: int, warmup: int) -> LatencyStats:
    return LatencyStats.from_samples([time_once_ms(fn, device) for _ in range(runs)], warmup)
