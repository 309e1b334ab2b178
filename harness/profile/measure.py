"""Measuring one profiling point: synthetic inputs, FLOPs, latency and peak memory.

Read top to bottom: the inputs a point runs on; its FLOPs, counted by
`torch.utils.flop_counter.FlopCounterMode` on the meta device and set beside the model's analytic
formula; its latency (warm-up, then timed runs: CUDA events on a GPU, `time.perf_counter` on a CPU);
its peak memory; `measure_call`, which does all of that for one callable under the requested dtype,
SDPA backend and torch.compile setting; and the `RunContext` a profiling experiment resolves to on
this machine (device, dtype, preset, model config, provenance).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from models import SHARED_SIZES, VariantConfig, build_model, label, model_class, model_config, preset_names
from models.base import NVSModel
from models.flops import FlopEstimate

from ..distributed import current_world
from ..errors import ConfigError
from ..pipeline import measured_commits
from ..provenance import environment, numerics_text
from ..runtime import DTYPES, autocast, default_dtype, resolve_device, resolve_preset
from ..schema import Measurement

# --------------------------------------------------------------------------------------- inputs
# A forward pass costs the same whatever the pixels and cameras hold, so random images and simple
# cameras are enough (and need no dataset).


def cameras(batch: int, views: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV camera-to-world matrices (identity rotations, scattered centres) and pixel intrinsics."""
    c2w = torch.eye(4).repeat(batch, views, 1, 1)
    c2w[..., :3, 3] = 0.5 * torch.randn(batch, views, 3, generator=generator)
    fxfycxcy = torch.tensor([float(size), float(size), size / 2, size / 2]).repeat(batch, views, 1)
    return c2w, fxfycxcy


def input_views(batch: int, views: int, size: int, device: torch.device | str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, views, 3, size, size, generator=g)
    c2w, k = cameras(batch, views, size, g)
    return images.to(device), c2w.to(device), k.to(device)


def target_views(batch: int, views: int, size: int, device: torch.device | str, seed: int = 1):
    c2w, k = cameras(batch, views, size, torch.Generator().manual_seed(seed))
    return c2w.to(device), k.to(device)


def synthetic_views(batch: int, n_input: int, n_target: int, size: int, device: torch.device | str, seed: int = 0):
    """The five tensors of the call contract, on `device` (`meta` works too)."""
    if torch.device(device).type == "meta":  # shapes only: skip generating values that are dropped
        b, n, m = batch, n_input, n_target
        return tuple(torch.empty(*shape, device="meta") for shape in
                     [(b, n, 3, size, size), (b, n, 4, 4), (b, n, 4), (b, m, 4, 4), (b, m, 4)])
    return (*input_views(batch, n_input, size, device, seed), *target_views(batch, n_target, size, device, seed + 1))


# ---------------------------------------------------------------------------------------- FLOPs
# On meta, `scaled_dot_product_attention` runs through kernels FlopCounterMode has formulas for, so
# attention is counted (on a real CPU the default SDPA kernel is not), and even the paper preset at
# N=64 costs nothing to count.


@dataclass(frozen=True)
class FlopCount:
    counted: int  # FlopCounterMode's total, FLOPs (2 per multiply-add)
    analytic: FlopEstimate

    @property
    def relative_difference(self) -> float:
        return abs(self.counted - self.analytic.flops) / max(self.analytic.flops, 1)

    def columns(self) -> dict[str, float]:
        return {"gflops": self.counted / 1e9, "gflops_analytic": self.analytic.flops / 1e9,
                "gmacs_linear_thop": self.analytic.linear_macs / 1e9, "gmacs_attention": self.analytic.attention_macs / 1e9,
                "flops_rel_diff": self.relative_difference}


def _count(fn: Callable[[], Any]) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@dataclass(frozen=True)
class Sizes:
    """The models of a run: one preset name, with overrides of fields every variant shares (image_size
    ...); each variant's config is its own preset of that name with them."""
    preset: str
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def config(self, name: str) -> VariantConfig:
        return model_config(name, self.preset, **self.overrides)

    @property
    def image_size(self) -> int:
        if "image_size" in self.overrides:
            return int(self.overrides["image_size"])
        return VariantConfig(**SHARED_SIZES.get(self.preset, {})).image_size

    def with_image_size(self, image_size: int) -> "Sizes":
        return Sizes(self.preset, {**self.overrides, "image_size": image_size})


class FlopCounter:
    """Counts the forward FLOPs of the variants at one preset; models are built once, on meta."""

    def __init__(self, sizes: Sizes):
        self.sizes = sizes
        self._models: dict[str, NVSModel] = {}

    def model(self, name: str) -> NVSModel:
        if name not in self._models:
            with torch.device("meta"):
                self._models[name] = build_model(name, self.sizes.config(name)).eval()
        return self._models[name]

    def forward(self, name: str, n_input: int, n_target: int, batch: int = 1) -> FlopCount:
        model = self.model(name)
        size = model.config.image_size
        views = synthetic_views(batch, n_input, n_target, size, "meta")
        return FlopCount(_count(lambda: model(*views)), model.analytic_flops(n_input, n_target, batch, size))

    def incremental(self, name: str, n_cached: int, n_new: int, n_target: int, batch: int = 1) -> FlopCount:
        """Adding `n_new` views to a KV cache of `n_cached` views, then rendering `n_target` views."""
        model = self.model(name)
        size = model.config.image_size
        renderer = model.incremental(*target_views(batch, n_target, size, "meta"), size, size)
        with torch.no_grad():
            renderer.add_views(*input_views(batch, n_cached, size, "meta"))
        new = input_views(batch, n_new, size, "meta", seed=7)
        counted = _count(lambda: renderer.add_views(*new).render())
        return FlopCount(counted, model.incremental_flops(n_cached, n_new, n_target, batch, size))


    def scene(self, name: str, n_input: int, n_target: int = 1, batch: int = 1) -> tuple[int, int, Any]:
        """Encode once, render many: FLOPs of `encode_scene` on n_input views and of `render_scene`
        of n_target more views from that state, and the state (meta tensors: shapes only)."""
        model = self.model(name)
        size = model.config.image_size
        images, c2w, fxfycxcy, target_c2w, target_fxfycxcy = synthetic_views(batch, n_input, n_target, size, "meta")
        built: list[Any] = []
        encode = _count(lambda: built.append(model.encode_scene(images, c2w, fxfycxcy)))
        return encode, _count(lambda: model.render_scene(built[0], target_c2w, target_fxfycxcy)), built[0]


# -------------------------------------------------------------------------------------- latency


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
    def from_samples(cls, samples_ms: Sequence[float], warmup: int) -> "LatencyStats":
        q1, median, q3 = quartiles(samples_ms)
        return cls(median, q1, q3, len(samples_ms), warmup)

    def columns(self, noisy_iqr: float) -> dict[str, Any]:
        spread = self.iqr_ms / self.median_ms if self.median_ms > 0 else 0.0
        return {"latency_ms": self.median_ms, "latency_iqr_ms": self.iqr_ms, "latency_q1_ms": self.q1_ms,
                "latency_q3_ms": self.q3_ms, "runs": self.runs, "warmup": self.warmup,
                "latency_spread": spread, "noisy": bool(spread > noisy_iqr),
                "noisy_reason": f"IQR {spread:.0%} of the median" if spread > noisy_iqr else ""}


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """First quartile, median and third quartile: the one definition every IQR here uses (Python's
    `statistics.quantiles`, inclusive method, which is numpy's default linear interpolation; all three
    equal for a single value)."""
    middle = float(statistics.median(values))
    if len(values) < 2:
        return middle, middle, middle
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return float(q1), middle, float(q3)


class Contention:
    """Whether other work shared this CPU while a point was timed: `with Contention(device) as c:` fills
    `c.columns`. Two readings, both of the point itself: the process's CPU time against the wall time
    (its threads could not run while another process held the cores: below `CPU_SHARE` of the threads it
    uses), and the 1-minute load average against the cores (more runnable work than the cores left over
    by this process's threads, by more than one). Either marks the point noisy with its reason; a
    load-free time on a shared CPU would be load, not cost. Not read on accelerators (their kernels run
    while the host waits)."""

    CPU_SHARE = 0.6

    def __init__(self, device: torch.device):
        self.device = device
        self.columns: dict[str, Any] = {}

    @staticmethod
    def load() -> float | None:
        try:
            return os.getloadavg()[0]
        except OSError:  # not offered on this platform
            return None

    @classmethod
    def reading(cls, device: torch.device, wall: float, cpu: float, threads: int, loads: Sequence[float | None]) -> str:
        """Why a span of `wall` seconds, in which this process used `cpu` seconds with `threads` threads,
        was shared with other work ('' when it was not)."""
        if device.type != "cpu":
            return ""
        cores = os.cpu_count() or 1
        used = min(threads, cores)
        reasons = []
        if wall > 0.05 and cpu / wall < cls.CPU_SHARE * used:
            reasons.append(f"process CPU time {cpu / wall:.2f}x wall with {threads} thread(s)")
        load = max((v for v in loads if v is not None), default=None)
        if load is not None and load - used > cores - used + 1:
            reasons.append(f"load average {load:.1f} on {cores} cores with {threads} thread(s) of ours")
        return "; ".join(reasons)

    def __enter__(self) -> "Contention":
        self._load0, self._cpu0, self._wall0 = self.load(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type != "cpu":
            return
        wall, cpu = time.perf_counter() - self._wall0, time.process_time() - self._cpu0
        loads = [self._load0, self.load()]
        self.columns = {"load_avg": max((v for v in loads if v is not None), default=None),
                        "cpu_per_wall": cpu / wall if wall > 0 else None,
                        "contended": self.reading(self.device, wall, cpu, torch.get_num_threads(), loads)}


def mark_contention(columns: dict[str, Any], contention: Mapping[str, Any]) -> dict[str, Any]:
    """The point's columns with the contention reading, noisy when it says the cores were shared."""
    out = {**columns, **contention}
    if contention.get("contended"):
        out["noisy"] = True
        out["noisy_reason"] = "; ".join(r for r in (columns.get("noisy_reason"), "contended: " + contention["contended"]) if r)
    return out


def time_once_ms(fn: Callable[[], Any], device: torch.device) -> float:
    """CUDA kernels are asynchronous: host clocks would time the launch, so CUDA events time the work."""
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
    """Run `fn` up to `runs` times (at least once, which also builds lazily built kernels), stopping
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
    """`runs` timed runs, or fewer (never under `min_runs`) when they would overrun `budget_s`: on a
    loaded machine every point is still measured, with fewer repetitions."""
    if budget_s is None or last_ms <= 0:
        return runs
    affordable = int(budget_s * 1e3 // last_ms)
    return max(min(runs, affordable), min(min_runs, runs))


def timed_runs(fn: Callable[[], Any], device: torch.device, runs: int, warmup: int, min_runs: int | None = None,
               budget_s: float | None = None) -> LatencyStats:
    """Up to `runs` timed runs, stopping once `budget_s` is spent (never before `min_runs`): the count
    adapts to the load while it is measured, not only to the warm-up's estimate."""
    samples: list[float] = []
    spent_ms = 0.0
    while len(samples) < runs:
        samples.append(time_once_ms(fn, device))
        spent_ms += samples[-1]
        if budget_s is not None and len(samples) >= min(min_runs or runs, runs) and spent_ms / 1e3 >= budget_s:
            break
    return LatencyStats.from_samples(samples, warmup)


# --------------------------------------------------------------------------------------- memory
# CUDA: the allocator's peak. CPU: the process's peak resident set size (VmHWM); writing "5" to
# /proc/self/clear_refs resets it to the current RSS (Linux >= 4.0), so each point gets its own
# peak. It is the whole process's peak: `baseline_mem_mb` is the RSS when the block started, and
# peak minus baseline approximates the block's own working memory. Freed heap pages are handed back
# with malloc_trim first, so the previous point's garbage does not count.

MIB = 2 ** 20


@functools.lru_cache(maxsize=1)
def _libc():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
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
    """`with PeakMemory(device) as m:` fills `m.columns`: peak_mem_mb, peak_reserved_mb (CUDA only),
    baseline_mem_mb, mem_kind. Where /proc is missing (not Linux) the CPU columns stay empty."""

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
            self.columns = {"peak_mem_mb": torch.cuda.max_memory_allocated(self.device) / MIB,
                            "peak_reserved_mb": torch.cuda.max_memory_reserved(self.device) / MIB,
                            "baseline_mem_mb": self._baseline / MIB, "mem_kind": "cuda max_memory_allocated"}
            return
        peak = _status_kib("VmHWM") if self._cpu_ok else None
        self.columns = {"peak_mem_mb": None if peak is None else peak * 1024 / MIB, "peak_reserved_mb": None,
                        "baseline_mem_mb": self._baseline / MIB if peak is not None else None,
                        "mem_kind": "cpu process peak RSS (VmHWM)" if peak is not None else "unavailable"}


# ------------------------------------------------------------------------------ one measured call

SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION", "math": "MATH"}


def sdpa_backend(name: str):
    """A context that pins torch SDPA to one backend; `auto` leaves torch's choice."""
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[name]))


def measured_step(fn: Callable[[], Any], device: torch.device, dtype: str, settings: Measurement) -> Callable[[], Any]:
    """`fn` as it is timed: under `torch.no_grad()`, the autocast dtype and the SDPA backend asked for."""
    def step() -> Any:
        with torch.no_grad(), autocast(device, dtype), sdpa_backend(settings.sdpa_backend):
            return fn()
    return step


def interleaved_ms(calls: Sequence[Callable[[], Any]], device: torch.device, rounds: int, warmup: int = 1,
                   min_rounds: int | None = None, budget_s: float | None = None) -> list[list[float]]:
    """Milliseconds per call, the calls timed in turn round after round after `warmup` untimed
    rounds; each round starts one call later than the last, so that no call always runs right
    after the same other one (on a shared CPU two copies of one model, timed in a fixed order,
    read 6% apart). Rounds stop at `rounds`, or once `budget_s` is spent (never before `min_rounds`)."""
    for _ in range(warmup):
        for call in calls:
            call()
    times: list[list[float]] = [[] for _ in calls]
    start = time.perf_counter()
    for round_ in range(rounds):
        if budget_s is not None and round_ >= (min_rounds or rounds) and time.perf_counter() - start > budget_s:
            break
        for index in [(round_ + k) % len(calls) for k in range(len(calls))]:
            times[index].append(time_once_ms(calls[index], device))
    return times


def measure_call(fn: Callable[[], Any], device: torch.device, dtype: str, settings: Measurement,
                 compile_s: float | None = None) -> dict[str, Any]:
    """Warm-up, then timed runs with the peak memory taken over them (see `measured_step`)."""
    step = measured_step(fn, device, dtype, settings)
    warm_budget = None if settings.time_budget_s is None else settings.time_budget_s / 4
    warmed, last_ms = warm_up(step, device, settings.warmup, warm_budget)
    runs = planned_runs(last_ms, settings.runs, settings.min_runs, settings.time_budget_s)
    with PeakMemory(device) as memory, Contention(device) as contention:
        stats = timed_runs(step, device, runs, warmed, settings.min_runs, settings.time_budget_s)
    return mark_contention({**stats.columns(settings.noisy_iqr), **memory.columns, "sdpa_backend": settings.sdpa_backend,
                            "compiled": settings.compile, "compile_s": compile_s}, contention.columns)


def median_iqr(values: Sequence[float]) -> tuple[float, float]:
    """Median and interquartile range (0 for a single value), by `quartiles`."""
    q1, middle, q3 = quartiles(values)
    return middle, q3 - q1


def alternating_ratio(first: Callable[[], Any], second: Callable[[], Any], device: torch.device, dtype: str,
                      settings: Measurement) -> dict[str, Any]:
    """first / second latency, the two timed in alternating order round after round and the ratio
    taken per round: a ratio of two points measured minutes apart rides whatever else the machine
    did in between (on a shared CPU it moved a headline by 1.5x between runs). Up to `runs` rounds,
    within twice the point's `time_budget_s` (never under `min_runs`)."""
    budget = None if settings.time_budget_s is None else 2 * settings.time_budget_s
    with Contention(device) as contention:
        times = interleaved_ms([measured_step(fn, device, dtype, settings) for fn in (first, second)], device,
                               settings.runs, max(settings.warmup, 1), settings.min_runs, budget)
    ratios = [a / b for a, b in zip(*times)]
    ratio, iqr = median_iqr(ratios)
    spread = iqr / ratio if ratio > 0 else 0.0
    columns = {"latency_ratio": ratio, "latency_ratio_iqr": iqr, "rounds": len(ratios),
               "first_ms": statistics.median(times[0]), "second_ms": statistics.median(times[1]),
               "noisy": bool(spread > settings.noisy_iqr),
               "noisy_reason": f"ratio IQR {spread:.0%} of the median" if spread > settings.noisy_iqr else ""}
    return mark_contention(columns, contention.columns)


def compiled(model: NVSModel, settings: Measurement, inductor_options: Mapping[str, Any] | None = None) -> Callable:
    """What a point calls: the model, or the model under torch.compile (compiled per shape on first
    use), with `inductor_options` (torch.compile's `options`) where given."""
    if not settings.compile:
        return model
    return torch.compile(model, options=dict(inductor_options)) if inductor_options else torch.compile(model)


def first_call(fn: Callable, settings: Measurement, call: Callable[[Callable], Any]) -> tuple[Callable, float | None]:
    """For a compiled `fn`: make the point's first call, which compiles for its shapes, and return
    the callable to time with the seconds that call took (`compile_s`, kept out of every latency).

    Past its recompile limit dynamo runs a function eagerly without saying so, and a recompile
    inside the timed runs would be timed as latency; either would pass eager or compile time off
    as compiled speed. So the first call fails instead of falling back, and the returned callable
    fails if it would recompile."""
    if not settings.compile:
        return fn, None
    start = time.perf_counter()
    with torch.no_grad(), torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        call(fn)
    compile_s = time.perf_counter() - start

    def without_recompiling(*args, **kwargs):
        with torch._dynamo.config.patch(error_on_recompile=True):
            return fn(*args, **kwargs)

    return without_recompiling, compile_s


# ---------------------------------------------------------------------------- matmul peak and MFU
# Model FLOP utilisation needs a peak to divide by. A datasheet peak says little about this card's
# clocks and this torch build, so the peak is a large matmul in the run's dtype, measured in the same run.

MATMUL_SIZE = {"cuda": 8192, "cpu": 2048}


@functools.lru_cache(maxsize=8)
def matmul_peak_tflops(device_type: str, dtype: str, threads: int) -> float:
    """Median TFLOP/s of an n^3 matmul in `dtype` (bf16 on CUDA, as the profiled models run). `threads`
    is not read here: it keys the cache, since a CPU peak measured with other thread counts does not hold."""
    device = torch.device(device_type)
    n = MATMUL_SIZE.get(device_type, 2048)
    torch_dtype = DTYPES[dtype]
    a = torch.randn(n, n, device=device, dtype=torch_dtype)
    b = torch.randn(n, n, device=device, dtype=torch_dtype)
    warm_up(lambda: a @ b, device, 2)
    times = sorted(time_once_ms(lambda: a @ b, device) for _ in range(5))
    return 2 * n ** 3 / (times[2] / 1e3) / 1e12


ATTENTION_KERNELS = {"flash": ("flash",), "cudnn": ("cudnn",), "efficient": ("efficient", "fmha", "mem_eff"),
                     "math": ("bmm", "baddbmm")}


def attention_backends(kernel_names: list[str]) -> list[str]:
    """The SDPA backends a profile's kernel names show, each kernel counted once, in the order
    cudnn, flash, efficient (cuDNN's names mention flash too); math shows as batched matmuls around a softmax."""
    found: list[str] = []
    for name in (k.lower() for k in kernel_names):
        family = next((f for f in ("cudnn", "flash", "efficient") if any(m in name for m in ATTENTION_KERNELS[f])), None)
        if family and family not in found:
            found.append(family)
    names = [k.lower() for k in kernel_names]
    if not found and any("softmax" in n for n in names) and any(m in n for n in names for m in ATTENTION_KERNELS["math"]):
        found = ["math"]
    return found


def sdpa_backend_used(fn: Callable[[], Any], device: torch.device) -> str:
    """Which SDPA kernel one call really ran, read off torch.profiler's CUDA kernel names."""
    if device.type != "cuda":
        return "cpu"
    from torch.profiler import ProfilerActivity, profile
    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    return "+".join(attention_backends([event.key for event in prof.key_averages()])) or "unknown"


# ------------------------------------------------------------------------------ the run's context

@dataclass
class RunContext:
    """What a profiling experiment resolves to on this machine: device, dtype, preset and model config."""
    device: torch.device
    dtype: str
    sizes: Sizes
    batch: int
    env: dict[str, Any] = field(default_factory=dict)

    @property
    def preset(self) -> str:
        return self.sizes.preset

    @property
    def image_size(self) -> int:
        return self.sizes.image_size

    def point(self, **values: Any) -> dict[str, Any]:
        """A point's identity: the swept values plus everything that changes what is measured."""
        measured = {} if self.device.type == "meta" else {"threads": self.env["threads"]}
        names = values.get("pair") or ([values["model"]] if "model" in values else [])
        numerics = {name: n for name in names if (n := model_class(name).numerics_of(self.sizes.config(name), self.device))}
        if numerics and self.device.type != "meta":  # what ran changes the time (a variant's kernel choice)
            measured["numerics"] = numerics
        configs = {name: self.sizes.config(name).to_dict() for name in names}
        return {"preset": self.preset, "config": configs, "device": self.env["device"],
                "dtype": self.dtype, **measured, **values}

    def notes(self, rows: Sequence[Mapping[str, Any]] = ()) -> list[str]:
        """Provenance lines; the commit is the one the `rows` were measured at (a rerun that only
        rebuilds the tables from recorded rows must not relabel them with the current commit)."""
        names = dict.fromkeys(name for r in rows for name in (r.get("pair") or [r.get("model")]) if name)
        described = "; ".join(f"{label(name)}: {self.sizes.config(name).describe()}" for name in names)
        size = f"preset `{self.preset}`, batch {self.batch}"
        size += f" ({described})" if described else f", {self.image_size}x{self.image_size} px"
        if self.device.type == "meta":
            where = "counted: FlopCounterMode on the meta device (shapes only), forward pass, attention included"
        else:
            where = (f"measured: {self.env['device']}, dtype {self.dtype} ({'autocast' if self.dtype != 'float32' else 'no autocast'}), "
                     f"torch {self.env['torch']}, torch threads={self.env['threads']}, torch.no_grad()")
        ran = sorted({f"{label(name)}: {numerics_text(choice)}" for r in rows for name, choice in (r.get("numerics") or {}).items()})
        numerics = [f"numerics: {'; '.join(ran)}"] if ran else []
        return [where, size, *numerics, "inputs: synthetic random views; weights: random init (cost does not depend on values)",
                f"code: commit {', '.join(measured_commits(rows) or [self.env['commit']])}, "
                f"records keyed by the version of the code that measures each point "
                f"({', '.join(sorted({str(r['version']) for r in rows if r.get('version')})) or 'none recorded yet'})"]


def refuse_shared_cores(name: str, device: torch.device, allowed: bool) -> None:
    """Several ranks timing on one CPU share its cores: every time would include the other ranks' load.
    Refused in one line, alike on every rank, unless `allowed`."""
    world = current_world()
    if device.type == "cpu" and world.distributed and not allowed:
        error = ConfigError(f"{name}: timing on a CPU under {world.size} ranks is refused: they share its cores, so each "
                            "would time the others' load; run it as one process (python -m harness run ...), or add "
                            "--set allow_cpu_multirank=true to time anyway (its tables then say the cores were shared)")
        error.every_rank = True
        raise error


def shared_cores_note(rows: Sequence[Mapping[str, Any]]) -> str:
    """What every table says of rows timed by several ranks on one CPU (`allow_cpu_multirank`), or ''."""
    shared = [r for r in rows if r.get("status") == "ok" and r.get("device_type") == "cpu" and (r.get("world_size") or 1) > 1]
    if not shared:
        return ""
    sizes = " or ".join(str(n) for n in sorted({int(r["world_size"]) for r in shared}))
    return (f"timed under shared cores: {len(shared)} of these points were timed while {sizes} ranks ran on this CPU at "
            "once (allow_cpu_multirank), so each time includes the other ranks' load; time them as one process to compare")


def mark_shared_cores(report: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """Put `shared_cores_note` first in the report's notes and in every table's."""
    note = shared_cores_note(rows)
    if note:
        for notes in [report.notes, *(table.notes for table in report.tables)]:
            if note not in notes:
                notes.insert(0, note)


def resolve_context(preset: str, batch: int, image_size: int | None, measurement: Measurement | None) -> RunContext:
    """`measurement` None: FLOPs only, counted on the meta device."""
    dev = torch.device("meta") if measurement is None else resolve_device(measurement.device)
    name = resolve_preset(preset, dev)
    if name not in preset_names():
        raise ConfigError(f"preset: unknown value {name!r}; allowed: auto, {', '.join(preset_names())}")
    sizes = Sizes(name) if image_size is None else Sizes(name).with_image_size(image_size)
    if image_size is not None:
        try:
            VariantConfig(**{**SHARED_SIZES.get(name, {}), "image_size": image_size})
        except ValueError as error:
            raise ConfigError(f"image_size: {error}") from None
    if measurement is not None and measurement.threads:
        torch.set_num_threads(measurement.threads)
    dtype = "float32" if measurement is None else measurement.dtype
    if dtype == "auto":
        dtype = default_dtype(dev)
    env = environment("cpu" if dev.type == "meta" else dev)
    if dev.type == "meta":
        env["device"] = "meta (counted, not run)"
    return RunContext(dev, dtype, sizes, batch, env)


class ModelCache:
    """Builds each variant once on the measuring device, so that points of different variants can
    alternate (a burst of load from other processes then hits neighbours alike)."""

    def __init__(self, sizes: Sizes, device: torch.device):
        self.sizes, self.device = sizes, device
        self.models: dict[str, NVSModel] = {}

    def get(self, name: str) -> NVSModel:
        if name not in self.models:
            torch.manual_seed(0)
            with torch.device(self.device):
                self.models[name] = build_model(name, self.sizes.config(name)).eval().requires_grad_(False)
        return self.models[name]
