"""Kind `profile_kv_cache`: the cost of adding input views to N existing ones and rendering M
targets. Efficient-LVSM keeps the per-layer cross-attention K/V of the views it has seen
(`model.incremental`) and encodes only the new view; LVSM decoder-only has nothing to reuse (its
input tokens attend to the targets) and recomputes everything over N+1 views
(experiments/kv_cache.yaml)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from models import model_class

from ..experiment import register_kind
from ..runtime import autocast
from ..tables import markdown, write_tables
from . import report
from .flops import FlopCounter
from .inputs import input_views, synthetic_views, target_views
from .measure import measure_call
from .spec import MeasuredSpec, ModelCache, check_model_list, resolve_context

PUBLISHED_KEYS = ("n", "cached_ms", "recompute_ms")


@dataclass
class KVCacheExperiment(MeasuredSpec):
    cached_model: str = "efficient_lvsm"
    baseline_model: str = "lvsm_decoder_only"
    n_cached: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 48, 64])
    n_new: int = 1
    n_targets: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        check_model_list([self.cached_model], "cached_model")
        check_model_list([self.baseline_model], "baseline_model")
        if not hasattr(model_class(self.cached_model), "incremental"):
            raise ValueError(f"cached_model: {self.cached_model!r} has no KV-cache renderer (`incremental`)")
        if not self.n_cached or any(n <= 0 for n in self.n_cached):
            raise ValueError(f"n_cached: expected a non-empty list of positive ints, got {self.n_cached}")
        if self.n_new <= 0 or self.n_targets <= 0:
            raise ValueError(f"n_new, n_targets: expected positive ints, got {self.n_new}, {self.n_targets}")
        for i, row in enumerate(self.published.rows if self.published else []):
            if not all(isinstance(row.get(k), (int, float)) for k in PUBLISHED_KEYS):
                raise ValueError(f"published.rows[{i}]: expected numbers under {list(PUBLISHED_KEYS)}, got {row}")


def _cache_mib(cache) -> float:
    return sum(t.numel() * t.element_size() for kv in cache for t in kv) / 2 ** 20


def build_report(spec: KVCacheExperiment, ctx, rows: list[dict[str, Any]], expected: int) -> list[str]:
    out_dir = spec.results_dir()
    frame = report.ok_frame(rows)
    notes = ctx.notes(spec, rows) + [
        f"cached: {report.LABELS.get(spec.cached_model)} adds {spec.n_new} view(s) to a KV cache of N views, then renders "
        f"{spec.n_targets} targets; recompute: {report.LABELS.get(spec.baseline_model)} renders the {spec.n_targets} targets "
        f"from all N+{spec.n_new} views",
        "latency: median (IQR) of the timed runs after warm-up; GFLOPs: FlopCounterMode on meta, 2 x MAC, attention included",
    ] + report.failures(rows, ["model", "mode", "n_cached"])
    if len(rows) < expected:
        notes.append(f"{expected - len(rows)} of {expected} points not measured yet (rerun to resume)")
    if spec.published:
        notes.append(f"published: {spec.published.source}")
    if frame.empty:
        return ["no point measured successfully", *notes]
    cached = frame[frame["mode"] == "kv_cache"].set_index("n_cached")
    full = frame[frame["mode"] == "recompute"].set_index("n_cached")
    ns = sorted(set(cached.index) | set(full.index))
    table = pd.DataFrame({"N": ns})
    table["cached ms"] = [cached["latency_ms"].get(n) for n in ns]
    table["cached IQR"] = [cached["latency_iqr_ms"].get(n) for n in ns]
    table["recompute ms"] = [full["latency_ms"].get(n) for n in ns]
    table["recompute IQR"] = [full["latency_iqr_ms"].get(n) for n in ns]
    table["speed-up"] = table["recompute ms"] / table["cached ms"]
    published = {int(r["n"]): r for r in (spec.published.rows if spec.published else [])}
    if published:
        table["published cached ms"] = [published.get(n, {}).get("cached_ms") for n in ns]
        table["published recompute ms"] = [published.get(n, {}).get("recompute_ms") for n in ns]
        table["published speed-up"] = table["published recompute ms"] / table["published cached ms"]
    table["cached GFLOPs"] = [cached["gflops"].get(n) for n in ns]
    table["recompute GFLOPs"] = [full["gflops"].get(n) for n in ns]
    table["FLOPs ratio"] = table["recompute GFLOPs"] / table["cached GFLOPs"]
    table["KV cache MiB"] = [cached["kv_cache_mb"].get(n) for n in ns]
    table["cached peak MiB"] = [cached["peak_mem_mb"].get(n) for n in ns]
    table["recompute peak MiB"] = [full["peak_mem_mb"].get(n) for n in ns]
    table = report.blank_missing(table)
    paths = write_tables(table, out_dir, spec.name, "Adding one input view: KV cache vs recomputing", notes)
    slopes = report.exponents(frame, "n_cached", {"latency_ms": "latency exponent", "gflops": "FLOPs exponent"},
                              ["model", "mode"], spec.fit_min_n)
    slopes["model"] = slopes["model"].map(lambda m: report.LABELS.get(m, m))
    extra = {}
    if published:
        pub = pd.DataFrame(published.values()).sort_values("n").rename(columns={"n": "n_cached"})
        extra = {"published cached": pub.rename(columns={"cached_ms": "latency_ms"})[["n_cached", "latency_ms"]],
                 "published recompute": pub.rename(columns={"recompute_ms": "latency_ms"})[["n_cached", "latency_ms"]]}
        for label, ref in extra.items():
            slope = report.growth_exponent(ref["n_cached"], ref["latency_ms"], spec.fit_min_n)
            slopes = pd.concat([slopes, pd.DataFrame([{"model": label, "mode": "published", "latency exponent": slope}])])
    write_tables(slopes, out_dir, "exponents", f"Growth exponents in N (fit over N >= {spec.fit_min_n})", notes[:2])
    figure = report.loglog(frame, out_dir / "kv_cache.png", "n_cached",
                           {"latency_ms": "latency (ms)", "gflops": "GFLOPs"}, None, "model", spec.fit_min_n,
                           f"add {spec.n_new} view + render {spec.n_targets} ({ctx.env['device']}, {ctx.dtype}, preset {ctx.preset})",
                           extra)
    return [f"# {spec.name}", *[f"- {n}" for n in notes], "", markdown(table), "",
            "## Growth exponents in N", "", markdown(slopes, floatfmt=".2f"), "",
            f"wrote {paths['md']}, {out_dir / 'exponents.md'}, {figure}"]


@register_kind("profile_kv_cache", KVCacheExperiment)
def run_kv_cache(spec: KVCacheExperiment, preset: str | None = None, progress: bool = True) -> list[dict[str, Any]]:
    ctx = resolve_context(spec, preset)
    settings = spec.measure_settings()
    common = dict(n_new=spec.n_new, n_target=spec.n_targets, batch=spec.batch, **settings.key())
    points = [ctx.point(model=model, mode=mode, n_cached=n, **common) for n in sorted(spec.n_cached)
              for model, mode in ((spec.cached_model, "kv_cache"), (spec.baseline_model, "recompute"))]
    counter, models = FlopCounter(ctx.config), ModelCache(ctx.config, ctx.device)
    size, dev = ctx.image_size, ctx.device

    def measure(point: dict[str, Any]) -> dict[str, Any]:
        n, new, m, b = point["n_cached"], point["n_new"], point["n_target"], point["batch"]
        model = models.get(point["model"])
        if point["mode"] == "recompute":
            flops = counter.forward(point["model"], n + new, m, b)
            views = synthetic_views(b, n + new, m, size, dev)
            return {**flops.columns(), "kv_cache_mb": None, **measure_call(lambda: model(*views), dev, ctx.dtype, settings)}
        flops = counter.incremental(point["model"], n, new, m, b)
        renderer = model.incremental(*target_views(b, m, size, dev), size, size)
        with torch.no_grad(), autocast(dev, ctx.dtype):
            renderer.add_views(*input_views(b, n, size, dev))
        base, added = renderer.cache, input_views(b, new, size, dev, seed=7)

        def step():
            # Each timed run starts again from the same N cached views.
            renderer.cache, renderer.num_views = base, n
            return renderer.add_views(*added).render()

        return {**flops.columns(), "kv_cache_mb": _cache_mib(base), **measure_call(step, dev, ctx.dtype, settings)}

    return ctx.measure_and_report(spec, points, measure, lambda p: f"{p['mode']} N={p['n_cached']}", progress,
                                  lambda rows: build_report(spec, ctx, rows, len(points)))
