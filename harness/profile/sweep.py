"""A sweep: points measured one by one, each recorded as one JSON line the moment it is measured.

A point that runs out of memory or raises is recorded with status `oom` / `error` and the sweep
goes on. A rerun skips points already recorded as `ok` or `oom` for the same experiment, point and
code version (an OOM would only repeat); `error` points are retried.
"""
from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from tqdm import tqdm

from ..records import RecordStore, point_key

SKIP_STATUSES = ("ok", "oom")
_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory")


def failure_status(error: BaseException) -> str:
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return "oom"
    if isinstance(error, RuntimeError) and any(text in str(error).lower() for text in _OOM_TEXT):
        return "oom"
    return "error"


def one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:limit]


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class SweepSummary:
    measured: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    left: int = 0  # not reached before the deadline; a rerun measures them

    def line(self, name: str) -> str:
        text = f"{name}: {self.measured} measured, {self.skipped} already recorded, {len(self.failed)} failed"
        if self.left:
            text += f", {self.left} left for the next run (deadline reached; rerun to resume)"
        return text


@dataclass
class Sweep:
    store: RecordStore
    experiment: str
    version: str
    # Columns added to every row (device, torch version, threads, commit ...).
    context: Mapping[str, Any] = field(default_factory=dict)

    def key(self, point: Mapping[str, Any]) -> str:
        return point_key(self.experiment, point, self.version)

    def run(self, points: Sequence[Mapping[str, Any]], measure: Callable[[Mapping[str, Any]], Mapping[str, Any]],
            label: Callable[[Mapping[str, Any]], str] = lambda p: "", progress: bool = True,
            deadline_s: float | None = None) -> SweepSummary:
        """`deadline_s`: stop starting new points after this many seconds (nothing is recorded for
        the points left, so the next run measures them)."""
        done = self.store.done_keys(SKIP_STATUSES)
        summary = SweepSummary()
        start = time.monotonic()
        bar = tqdm(points, desc=self.experiment, unit="point", disable=not progress, dynamic_ncols=True, mininterval=1.0)
        for point in bar:
            key = self.key(point)
            if key in done:
                summary.skipped += 1
                continue
            if deadline_s is not None and time.monotonic() - start > deadline_s:
                summary.left += 1
                continue
            bar.set_postfix_str(label(point))
            try:
                result, status, error = dict(measure(point)), "ok", None
            except Exception as caught:  # one failing point is recorded; the sweep goes on
                result, status, error = {}, failure_status(caught), one_line(caught)
                summary.failed.append(f"{label(point)}: {error}")
                release_memory()
            self.store.append({"key": key, "experiment": self.experiment, "version": self.version,
                               "status": status, "error": error, **self.context, **point, **result})
            summary.measured += 1
        bar.close()
        return summary

    def rows(self, points: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The latest row of each point, in point order; points not yet recorded are left out."""
        latest = self.store.latest_by_key()
        return [latest[k] for k in (self.key(p) for p in points) if k in latest]
