"""Peak memory of the work done inside a `with PeakMemory(device):` block.

CUDA: `reset_peak_memory_stats()`, then `max_memory_allocated()` (tensors) and
`max_memory_reserved()` (what the caching allocator held) after the block.

CPU: the process's peak resident set size (VmHWM). Writing "5" to `/proc/self/clear_refs` resets
VmHWM to the current RSS (Linux >= 4.0), so each block gets its own peak. It is the whole
process's peak (weights, interpreter, libraries included): `baseline_mem_mb` is the RSS when the
block started, and peak minus baseline approximates the block's own working memory. Freed heap
pages are handed back with `malloc_trim` first, so the previous point's garbage does not count.
Where /proc is missing (not Linux) the CPU columns are left empty.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path

import torch

MiB = 2 ** 20


@functools.lru_cache(maxsize=1)
def _libc():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_cpu_peak() -> bool:
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Fills `columns` with peak_mem_mb, peak_reserved_mb (CUDA only), baseline_mem_mb, mem_kind."""

    def __init__(self, device: torch.device):
        self.device = device
        self.columns: dict[str, float | str | None] = {}

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
        else:
            self._cpu_ok = reset_cpu_peak()
            self._baseline = (_status_kib("VmRSS") or 0) * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.columns = {"peak_mem_mb": torch.cuda.max_memory_allocated(self.device) / MiB,
                            "peak_reserved_mb": torch.cuda.max_memory_reserved(self.device) / MiB,
                            "baseline_mem_mb": self._baseline / MiB,
                            "mem_kind": "cuda max_memory_allocated"}
            return
        peak = _status_kib("VmHWM") if self._cpu_ok else None
        self.columns = {"peak_mem_mb": None if peak is None else peak * 1024 / MiB,
                        "peak_reserved_mb": None,
                        "baseline_mem_mb": self._baseline / MiB if peak is not None else None,
                        "mem_kind": "cpu process peak RSS (VmHWM)" if peak is not None else "unavailable"}
