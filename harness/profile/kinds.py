"""The four profiling kinds: what each experiment YAML may say, its points, how a point is measured,
and the report built from the recorded rows.

- `profile`: latency, peak memory and FLOPs of each variant over a grid of N input and M target views
  (experiments/bench.yaml, experiments/speed_vs_views.yaml).
- `profile_flops`: forward FLOPs over the grid, counted on the meta device beside the analytic formula
  (experiments/flops.yaml).
- `profile_kv_cache`: adding views to N cached ones (Efficient-LVSM's KV cache) against recomputing
  everything (LVSM decoder-only), and against variants whose scene state is rebuilt when a view is
  added (LaCT's fast weights), with how far an incremental update of that state is from the rebuilt
  one (experiments/kv_cache.yaml).
- `profile_efficiency`: the published efficiency table with our measurements beside it
  (experiments/efficiency_table.yaml).

Under torchrun the points are shared out across the ranks, each rank timing its own on its own GPU,
every point measured once. On a CPU the ranks would share the cores and time each other's load, so
timing kinds refuse several ranks there unless `allow_cpu_multirank: true` (the tables then say so);
counting FLOPs (`profile_flops`) times nothing and runs under any world.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Literal, Mapping

import torch
from pydantic import Field, field_validator, model_validator

from models import build_model, label, model_class, released_models

from ..pipeline import Plan, run_plan
from ..report import measured_setting
from .report import ALL_MATMULS
from ..provenance import measured_by
from ..runtime import autocast
from ..schema import (ExperimentBase, Kind, Measurement, ModelName, Positive, PresetName, Published, Ratio, RunOptions, Spec)
from . import report
from .measure import (MIB, FlopCounter, ModelCache, RunContext, Sizes, alternating_ratio, compiled, first_call, input_views,
                      mark_shared_cores, matmul_peak_tflops, measure_call, refuse_shared_cores, resolve_context,
                      sdpa_backend, sdpa_backend_used, synthetic_views, target_views)


def released_variants() -> list[str]:
    """The variants that are not an ablation of another: the default model list of every profiling experiment."""
    return released_models()


def baseline_variant() -> str:
    """The default baseline of a ratio: the first released variant (full attention over every view)."""
    return released_models()[0]


def cached_variant() -> str:
    """The default other side of a ratio: the first released variant with an exact cache of input views."""
    return next((name for name in released_models() if model_class(name).offers("incremental_views")), baseline_variant())


def default_ratio() -> Ratio:
    return Ratio(model=cached_variant(), baseline=baseline_variant())


# ---------------------------------------------------------------------------------------- specs


class CostSpec(ExperimentBase):
    preset: PresetName = "auto"
    batch: Positive = 1
    image_size: Positive | None = None  # None: the preset's
    # Growth exponents are fitted over this N range, the same in every experiment that writes one, so that
    # an exponent means one thing across pages.
    fit_n: list[Positive] = Field(default=[4, 16], min_length=2, max_length=2)
    # Which table of the variants' cards holds the published numbers printed beside ours.
    card_table: str = "efficiency"

    @property
    def fit(self) -> tuple[int, int]:
        return self.fit_n[0], self.fit_n[1]

    def preset_device(self) -> str:
        measure = getattr(self, "measure", None)  # none: FLOPs only, counted on the meta device
        return "meta" if measure is None else measure.device


class ViewGridSpec(CostSpec):
    models: list[ModelName] = Field(default_factory=released_variants, min_length=1)
    n_inputs: list[Positive] = Field(default=[1, 2, 4, 8, 16, 32, 64], min_length=1)
    n_targets: list[Positive] = Field(default=[1, 8], min_length=1)


class SharedCores(Spec):
    # Time on a CPU under several torchrun ranks anyway (refused otherwise: the ranks share its cores).
    allow_cpu_multirank: bool = False


class ProfileSpec(ViewGridSpec, SharedCores):
    kind: Literal["profile"]
    measure: Measurement = Measurement()
    # The pair whose ratios (first / second, same N and M) are tabulated, and the headline point.
    ratio: Ratio = Field(default_factory=default_ratio)
    headline_n: Positive = 2
    headline_m: Positive = 1


class FlopsSpec(ViewGridSpec):
    kind: Literal["profile_flops"]
    preset: PresetName = "paper"


class KVCacheRow(Spec):
    n: Positive
    cached_ms: float = Field(gt=0)
    recompute_ms: float = Field(gt=0)


class KVCacheSpec(CostSpec, SharedCores):
    kind: Literal["profile_kv_cache"]
    measure: Measurement = Measurement()
    # model: the variant adding views to its cache; baseline: the one recomputing from all views.
    ratio: Ratio = Field(default_factory=default_ratio)
    n_cached: list[Positive] = Field(default=[4, 8, 16, 32, 48, 64], min_length=1)
    n_new: Positive = 1
    n_targets: Positive = 8
    # Variants whose scene state is rebuilt from all N+1 views when one is added (the state of every
    # view changes), each measured rebuilding, with the render error of its approximate incremental
    # update (`extend_scene`) against the rebuilt state's render.
    rebuild_models: list[ModelName] = []
    published: Published[KVCacheRow] | None = None

    @field_validator("rebuild_models")
    @classmethod
    def _has_extension(cls, names: list[str]) -> list[str]:
        for name in names:
            if not model_class(name).offers("extend_scene"):
                raise ValueError(f"{name!r} has no approximate incremental update (`extend_scene`) to compare its rebuild with")
        return names

    @field_validator("ratio")
    @classmethod
    def _has_cache(cls, ratio: Ratio) -> Ratio:
        if not model_class(ratio.model).offers("incremental_views"):
            raise ValueError(f"{ratio.model!r} has no KV-cache renderer (`incremental`)")
        return ratio

    @field_validator("measure")
    @classmethod
    def _eager_only(cls, measure: Measurement) -> Measurement:
        # The incremental renderer (cache concatenation, per-layer K/V) runs eagerly; rows marked
        # compiled would compare an eager cache against nothing compiled.
        return measure.eager_only("profile_kv_cache", "the incremental renderer runs eagerly")


class EfficiencyRow(Spec):
    """A published method that is not a registered variant (registered ones take theirs from the card)."""
    label: str
    params_m: float = Field(gt=0)
    latency_ms: float = Field(gt=0)
    gflops_thop: float = Field(gt=0)


class SettingSearch(Spec):
    """Where the published table's unstated view setting is looked for: the paper-size models' thop count
    (linear layers, the published GFLOPs column) at every N, M up to `max_views` and each resolution."""
    image_sizes: list[Positive] = [256, 512]
    max_views: Positive = 32
    tolerance: float = Field(default=0.01, gt=0, lt=1)  # relative, for every published variant at once


class EfficiencySpec(CostSpec, SharedCores):
    kind: Literal["profile_efficiency"]
    setting_search: SettingSearch = SettingSearch()
    measure: Measurement = Measurement()
    models: list[ModelName] = Field(default_factory=released_variants, min_length=1)
    n_input: Positive = 2
    n_target: Positive = 1
    # The pair whose latency and FLOPs ratio is compared with the published one.
    ratio: Ratio = Field(default_factory=default_ratio)
    published: Published[EfficiencyRow] | None = None

    @model_validator(mode="after")
    def _pair_measured(self) -> "EfficiencySpec":
        missing = [m for m in self.ratio.names if m not in self.models]
        if missing:
            raise ValueError(f"ratio: {missing[0]!r} is not in models {self.models}")
        return self


# ------------------------------------------------------------------------------------ running


def cost_context(spec: CostSpec, measured: bool = True) -> RunContext:
    measurement = spec.measure if measured else None
    ctx = resolve_context(spec.preset, spec.batch, spec.image_size, measurement)
    if measured:
        refuse_shared_cores(spec.name, ctx.device, getattr(spec, "allow_cpu_multirank", False))
    return ctx


def sweep_and_report(spec: CostSpec, ctx: RunContext, points: list[dict[str, Any]], measure, label_of, options: RunOptions,
                      build) -> list[dict[str, Any]]:
    def report(rows: list[dict[str, Any]], expected: int):
        result = build(rows, expected)
        mark_shared_cores(result, rows)
        if result.setting is None:  # FLOPs of ours count every matmul; the model size is the preset's
            counted = ctx.device.type == "meta"
            result.setting = measured_setting(
                rows, counting=ALL_MATMULS, model={"preset": ctx.preset, "image_size": ctx.image_size},
                device={"name": "meta (shapes counted, nothing run)", "dtype": None, "threads": None} if counted else {"dtype": ctx.dtype})
        return result
    return run_plan(spec, Plan(points, measure, label_of, report, code=lambda p: measured_by(__name__, *_variants(p)),
                               context=ctx.env, manifest={"device": ctx.env["device"], "preset": ctx.preset, "dtype": ctx.dtype},
                               deadline_s=getattr(getattr(spec, "measure", None), "deadline_s", None)), options)


def forward_measure(ctx: RunContext, settings: Measurement):
    """The sweep's `measure` for forward points, and for a `pair` point (two models timed in
    alternation at one N, M); each model is built (and compiled) once."""
    counter, cache, fns = FlopCounter(ctx.sizes), ModelCache(ctx.sizes, ctx.device), {}

    def callable_for(name: str, views) -> tuple[Callable, float | None]:
        if name not in fns:
            fns[name] = compiled(cache.get(name), settings)
        with autocast(ctx.device, ctx.dtype):
            return first_call(fns[name], settings, lambda fn: fn(*views))

    def measure_pair(point: Mapping[str, Any]) -> dict[str, Any]:
        views = synthetic_views(point["batch"], point["n_input"], point["n_target"], ctx.image_size, ctx.device)
        (first, _), (second, _) = (callable_for(name, views) for name in point["pair"])
        return alternating_ratio(lambda: first(*views), lambda: second(*views), ctx.device, ctx.dtype, settings)

    def measure(point: Mapping[str, Any]) -> dict[str, Any]:
        if "pair" in point:
            return measure_pair(point)
        flops = counter.forward(point["model"], point["n_input"], point["n_target"], point["batch"])
        model = cache.get(point["model"])
        views = synthetic_views(point["batch"], point["n_input"], point["n_target"], ctx.image_size, ctx.device)
        fn, compile_s = callable_for(point["model"], views)
        timing = measure_call(lambda: fn(*views), ctx.device, ctx.dtype, settings, compile_s)
        peak = matmul_peak_tflops(ctx.device.type, ctx.dtype, torch.get_num_threads())
        achieved = flops.counted / (timing["latency_ms"] / 1e3) / 1e12
        with autocast(ctx.device, ctx.dtype), sdpa_backend(settings.sdpa_backend):
            used = sdpa_backend_used(lambda: fn(*views), ctx.device)
        return {"params": model.num_parameters(), **flops.columns(), **timing, "achieved_tflops": achieved,
                "matmul_peak_tflops": peak, "mfu": achieved / peak, "sdpa_backend_used": used}

    return measure


def _variants(point: Mapping[str, Any]) -> list[str]:
    return point.get("pair") or [point["model"]]


def _point_label(point: Mapping[str, Any]) -> str:
    return "/".join(point["pair"]) if "pair" in point else point["model"]


def run_profile(spec: ProfileSpec, options: RunOptions) -> list[dict[str, Any]]:
    ctx = cost_context(spec)
    points = [ctx.point(model=model, n_input=n, n_target=m, batch=spec.batch, measure=spec.measure.key())
              for m in spec.n_targets for n in sorted(spec.n_inputs) for model in spec.models]
    if all(name in spec.models for name in spec.ratio.names):  # the headline ratio, timed in alternation
        points.append(ctx.point(pair=spec.ratio.names, n_input=spec.headline_n, n_target=spec.headline_m,
                                batch=spec.batch, measure=spec.measure.key()))
    return sweep_and_report(spec, ctx, points, forward_measure(ctx, spec.measure),
                             lambda p: f"{_point_label(p)} N={p['n_input']} M={p['n_target']}", options,
                             lambda rows, expected: report.profile_report(spec, ctx, rows, expected))


def run_flops(spec: FlopsSpec, options: RunOptions) -> list[dict[str, Any]]:
    ctx = cost_context(spec, measured=False)
    points = [ctx.point(model=model, n_input=n, n_target=m, batch=spec.batch)
              for model in spec.models for m in spec.n_targets for n in sorted(spec.n_inputs)]
    counter = FlopCounter(ctx.sizes)

    def measure(point: Mapping[str, Any]) -> dict[str, Any]:
        count = counter.forward(point["model"], point["n_input"], point["n_target"], point["batch"])
        return {"params": counter.model(point["model"]).num_parameters(), **count.columns()}

    return sweep_and_report(spec, ctx, points, measure, lambda p: f"{p['model']} N={p['n_input']} M={p['n_target']}",
                             options, lambda rows, expected: report.flops_report(spec, ctx, rows, expected))


def _cache_mib(cache) -> float:
    return sum(t.numel() * t.element_size() for kv in cache for t in kv) / MIB


def run_kv_cache(spec: KVCacheSpec, options: RunOptions) -> list[dict[str, Any]]:
    ctx = cost_context(spec)
    settings = spec.measure
    common = dict(n_new=spec.n_new, n_target=spec.n_targets, batch=spec.batch, measure=settings.key())
    arms = [(spec.ratio.model, "kv_cache"), (spec.ratio.baseline, "recompute")] + [(name, "rebuild") for name in spec.rebuild_models]
    points = [ctx.point(model=model, mode=mode, n_cached=n, **common) for n in sorted(spec.n_cached) for model, mode in arms]
    counter, models = FlopCounter(ctx.sizes), ModelCache(ctx.sizes, ctx.device)
    size, dev = ctx.image_size, ctx.device

    def measure(point: Mapping[str, Any]) -> dict[str, Any]:
        n, new, m, b = point["n_cached"], point["n_new"], point["n_target"], point["batch"]
        model = models.get(point["model"])
        if point["mode"] == "recompute":
            flops = counter.forward(point["model"], n + new, m, b)
            views = synthetic_views(b, n + new, m, size, dev)
            return {**flops.columns(), "kv_cache_mb": None, **measure_call(lambda: model(*views), dev, ctx.dtype, settings)}
        if point["mode"] == "rebuild":
            flops = counter.forward(point["model"], n + new, m, b)
            views = synthetic_views(b, n + new, m, size, dev)
            return {**flops.columns(), "kv_cache_mb": None, **incremental_error(model, views, n, dev, ctx.dtype),
                    **measure_call(lambda: model(*views), dev, ctx.dtype, settings)}
        flops = counter.incremental(point["model"], n, new, m, b)
        renderer = model.incremental(*target_views(b, m, size, dev), size, size)
        with torch.no_grad(), autocast(dev, ctx.dtype):
            renderer.add_views(*input_views(b, n, size, dev))
        added = input_views(b, new, size, dev, seed=7)

        def step():
            return renderer.fork().add_views(*added).render()  # each timed run starts again from the same N views

        return {**flops.columns(), "kv_cache_mb": _cache_mib(renderer.cache), **measure_call(step, dev, ctx.dtype, settings)}

    return sweep_and_report(spec, ctx, points, measure, lambda p: f"{p['mode']} N={p['n_cached']}", options,
                             lambda rows, expected: report.kv_cache_report(spec, ctx, rows, expected))


def incremental_error(model, views, n: int, device: torch.device, dtype: str) -> dict[str, float]:
    """How far the render from the approximate incremental state (N views encoded, the rest added by
    `extend_scene`) is from the render from the state rebuilt on all views: largest absolute pixel
    difference and PSNR (dB) of the one against the other."""
    images, c2w, fxfycxcy, target_c2w, target_fxfycxcy = views
    with torch.no_grad(), autocast(device, dtype):
        exact = model.render_scene(model.encode_scene(images, c2w, fxfycxcy), target_c2w, target_fxfycxcy).float()
        state = model.encode_scene(images[:, :n], c2w[:, :n], fxfycxcy[:, :n], keep_gradients=True)
        state = model.extend_scene(state, images[:, n:], c2w[:, n:], fxfycxcy[:, n:])
        approx = model.render_scene(state, target_c2w, target_fxfycxcy).float()
    mse = float((approx - exact).square().mean())
    return {"incremental_max_abs": float((approx - exact).abs().max()),
            "incremental_psnr_db": float("inf") if mse == 0 else -10 * math.log10(mse)}


def published_setting_search(spec: EfficiencySpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The (N, M, resolution) settings at which the paper-size models' thop counts equal every published
    GFLOPs (thop) figure of the table within the tolerance, closest first (analytic counts, which the
    FLOP tests pin to FlopCounterMode's); and at the closest, each model's counts on the meta device:
    linear layers only (thop) and every matmul (FlopCounterMode), beside the published figure."""
    published = {name: row["gflops_thop"] for name, row in report.card_published(spec.card_table, spec.models).items()
                 if row.get("gflops_thop")}
    if not published:
        return [], []
    search = spec.setting_search
    with torch.device("meta"):
        models = {name: build_model(name, "paper") for name in published}
    found = []
    for size in search.image_sizes:
        for n in range(1, search.max_views + 1):
            for m in range(1, search.max_views + 1):
                ours = {name: model.analytic_flops(n, m, 1, size).linear_macs / 1e9 for name, model in models.items()}
                off = {name: ours[name] / published[name] - 1 for name in published}
                if all(abs(v) <= search.tolerance for v in off.values()):
                    found.append({"N": n, "M": m, "px": size, **{f"{label(k)} thop GMACs": ours[k] for k in ours},
                                  "largest |off|": max(abs(v) for v in off.values())})
    found.sort(key=lambda row: row["largest |off|"])
    counted = []
    if found:
        best = found[0]
        counter = FlopCounter(Sizes("paper", {"image_size": best["px"]}))
        for name in published:
            count = counter.forward(name, best["N"], best["M"])
            counted.append({"model": name, "N": best["N"], "M": best["M"], "px": best["px"],
                            "thop GMACs (linear only)": count.analytic.linear_macs / 1e9, "GFLOPs (all matmuls, counted)":
                            count.counted / 1e9, "published GFLOPs (thop)": published[name],
                            "counted = analytic": count.relative_difference <= 1e-4})
    return found, counted


def run_efficiency(spec: EfficiencySpec, options: RunOptions) -> list[dict[str, Any]]:
    ctx = cost_context(spec)
    search = published_setting_search(spec)
    points = [ctx.point(model=model, n_input=spec.n_input, n_target=spec.n_target, batch=spec.batch,
                        measure=spec.measure.key()) for model in spec.models]
    points.append(ctx.point(pair=[spec.ratio.baseline, spec.ratio.model], n_input=spec.n_input, n_target=spec.n_target,
                            batch=spec.batch, measure=spec.measure.key()))
    return sweep_and_report(spec, ctx, points, forward_measure(ctx, spec.measure), _point_label, options,
                             lambda rows, expected: report.efficiency_report(spec, ctx, rows, search))


PROFILE = Kind(ProfileSpec, run_profile, "latency, peak memory and FLOPs over N input and M target views")
FLOPS = Kind(FlopsSpec, run_flops, "forward FLOPs over N and M, counted on the meta device beside the analytic formula")
KV_CACHE = Kind(KVCacheSpec, run_kv_cache, "adding views: Efficient-LVSM's KV cache against recomputing")
EFFICIENCY = Kind(EfficiencySpec, run_efficiency, "the published efficiency table with our measurements beside it")
