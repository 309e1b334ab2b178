"""Reports of the profiling kinds, built from recorded rows (never from in-memory state): the
tables, the ratios of a pair of variants, growth exponents in N and log-log plots. Labels, colours
and published numbers come from the variants' cards."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from models import label, list_models, model_card, model_class

from ..pipeline import Report, Table, failure_notes, ok_frame
from ..plots import fixed, legend_outside, plt
from ..report import Fact, Setting, measured_setting
from ..tables import missing_as_none

THOP = "thop (linear layers)"  # the counting of the published GFLOPs columns
ALL_MATMULS = "all matmuls (FlopCounterMode)"

AXIS_NAMES = {"n_input": "N input views", "n_cached": "N cached input views", "n_target": "M target views"}


# ---------------------------------------------------------------------------------- shared parts


Fit = tuple[float, float | None]  # the N range a growth exponent is fitted over: (lowest, highest or None)


def fit_text(fit: Fit) -> str:
    return f"N {fit[0]:g}-{fit[1]:g}" if fit[1] is not None else f"N >= {fit[0]:g}"


def growth_exponent(ns: Sequence[float], values: Sequence[float], fit: Fit = (1, None)) -> float | None:
    """Least-squares slope of log(value) against log(n) over the points with n in the `fit` range and a
    positive value; None when fewer than two such n exist."""
    low, high = fit
    pairs = [(float(n), float(v)) for n, v in zip(ns, values)
             if low <= n and (high is None or n <= high) and v is not None and np.isfinite(v) and v > 0]
    if len({n for n, _ in pairs}) < 2:
        return None
    x, y = np.log([n for n, _ in pairs]), np.log([v for _, v in pairs])
    return float(np.polyfit(x, y, 1)[0])


def card_published(table: str, models: Sequence[str]) -> dict[str, Mapping[str, Any]]:
    """model -> {values..., "source"} for the variants whose card reports numbers in `table`."""
    out = {}
    for name in models:
        published = model_card(name).published.get(table) if name in list_models() else None
        if published is not None:
            out[name] = {**published.values, "source": published.source}
    return out


def published_setting_of(spec) -> Setting:
    """The setting the experiment's published table states (its `published.setting`), else the one its
    models' cards state for `card_table`; unset fields are not stated."""
    if spec.published is not None and spec.published.setting != Setting():
        return spec.published.setting
    for name in spec.models:
        entry = model_card(name).published.get(spec.card_table) if name in list_models() else None
        if entry is not None and entry.setting:
            return Setting.model_validate(entry.setting)
    return Setting()


def published_notes(table: str, models: Sequence[str], keys: Sequence[str]) -> list[str]:
    rows = card_published(table, models)
    return [f"published ({label(name)}): " + ", ".join(f"{k}={row[k]}" for k in keys if k in row) + f" (source: {row['source']})"
            for name, row in rows.items()]


def noisy_note(frame: pd.DataFrame, threshold: float, what: str = "latency") -> list[str]:
    if "noisy" not in frame or not frame["noisy"].fillna(False).astype(bool).any():
        return []
    noisy = frame["noisy"].fillna(False).astype(bool)
    contended = int((noisy & frame["contended"].fillna("").astype(bool)).sum()) if "contended" in frame else 0
    return [f"noisy: {int(noisy.sum())} point(s) marked `noisy`: their {what} IQR exceeds {threshold:.0%} of the median, "
            f"or other work shared the CPU while they were timed ({contended} of them: process CPU time well under its "
            "threads' share of the wall time, or the load average above the cores left free); rerun on a quiet machine"]


def exponents(frame: pd.DataFrame, x: str, metrics: dict[str, str], by: Sequence[str], fit: Fit) -> pd.DataFrame:
    """One row per group, one column per metric: the fitted log-log slope over x in the `fit` range."""
    out = []
    if frame.empty:
        return pd.DataFrame(out)
    for keys, group in frame.groupby(list(by), sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        group = group.sort_values(x)
        row = dict(zip(by, keys))
        for column, title in metrics.items():
            if column in group:
                row[title] = growth_exponent(group[x], pd.to_numeric(group[column], errors="coerce"), fit)
        out.append(row)
    return pd.DataFrame(out)


def loglog(frame: pd.DataFrame, x: str, metrics: dict[str, str], facet: str | None, series: str, fit: Fit,
           title: str, extra: dict[str, pd.DataFrame] | None = None):
    """A grid of log-log axes: one row per metric, one column per `facet` value; one line per
    `series` value, its fitted exponent (x in the `fit` range) in the legend. `extra` adds dashed reference
    lines (label -> frame with x and the metric columns), e.g. published numbers."""
    if frame.empty:
        return None
    facets = sorted(frame[facet].unique()) if facet else [None]
    fig, axes = plt.subplots(len(metrics), len(facets), figsize=(4.6 * len(facets), 3.4 * len(metrics)),
                             squeeze=False, layout="constrained")
    for r, (column, ylabel) in enumerate(metrics.items()):
        for c, value in enumerate(facets):
            ax = axes[r][c]
            part = frame if facet is None else frame[frame[facet] == value]
            for name, group in part.groupby(series, sort=False):
                group = group.sort_values(x)
                y = pd.to_numeric(group[column], errors="coerce")
                if not (y > 0).any():
                    continue
                slope = growth_exponent(group[x], y, fit)
                color = model_card(name).color if name in list_models() else None
                legend = f"{label(name)} (slope {fixed(slope)})" if slope is not None else label(name)
                ax.plot(group[x], y, marker="o", color=color, label=legend)
            for ref_label, ref in (extra or {}).items():
                if column in ref:
                    ref_slope = growth_exponent(ref[x], ref[column], fit)
                    ax.plot(ref[x], ref[column], linestyle="--", marker="x", color="gray",
                            label=f"{ref_label} (slope {fixed(ref_slope)})" if ref_slope is not None else ref_label)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(AXIS_NAMES.get(x, x))
            ax.set_ylabel(ylabel)
            if facet:
                ax.set_title(f"{AXIS_NAMES.get(facet, facet)} = {value}")
            ax.grid(True, which="both", alpha=0.3)
            legend_outside(ax)
    fig.suptitle(f"{title}\n(slopes fitted over {fit_text(fit)})")
    return fig


def ratio_table(frame: pd.DataFrame, numerator: str, denominator: str, keys: Sequence[str],
                metrics: dict[str, str]) -> pd.DataFrame:
    """numerator-model / denominator-model for each metric, matched on `keys` (e.g. N and M)."""
    if frame.empty or not {numerator, denominator} <= set(frame["model"]):
        return pd.DataFrame()
    a = frame[frame["model"] == numerator].set_index(list(keys))
    b = frame[frame["model"] == denominator].set_index(list(keys))
    joined = a.index.intersection(b.index)
    out = pd.DataFrame(index=joined)
    for column, title in metrics.items():
        out[title] = pd.to_numeric(a.loc[joined, column]) / pd.to_numeric(b.loc[joined, column])
    return out.reset_index().sort_values(list(keys))


def _labelled(frame: pd.DataFrame) -> pd.Series:
    return frame["model"].map(label)


def _unmeasured(rows: Sequence[Mapping[str, Any]], expected: int) -> list[str]:
    return [f"{expected - len(rows)} of {expected} points not measured yet (rerun to resume)"] if len(rows) < expected else []


# ---------------------------------------------------------------------------------------- profile

PROFILE_METRICS = {"latency_ms": "latency (ms)", "gflops": "GFLOPs (2 x MAC, attention incl.)",
                   "work_mem_mb": "peak - baseline memory (MiB)"}


def profile_table(frame: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({
        "model": _labelled(frame), "N": frame["n_input"], "M": frame["n_target"],
        "latency ms (median)": frame["latency_ms"], "IQR ms": frame["latency_iqr_ms"], "runs": frame["runs"],
        "noisy": frame["noisy"].map(lambda v: "noisy" if v is True else "") if "noisy" in frame else "",
        "peak mem MiB": frame["peak_mem_mb"], "peak - baseline MiB": frame["work_mem_mb"],
    })
    if frame["peak_reserved_mb"].notna().any():
        out["reserved MiB"] = frame["peak_reserved_mb"]
    if "compile_s" in frame and frame["compile_s"].notna().any():
        out["compile s"] = frame["compile_s"]
    out["GFLOPs"] = frame["gflops"]
    out["thop GMACs (linear only)"] = frame["gmacs_linear_thop"]
    if "mfu" in frame and frame["mfu"].notna().any():
        out["TFLOP/s"] = frame["achieved_tflops"]
        out["MFU (vs measured matmul)"] = frame["mfu"]
    if "sdpa_backend_used" in frame and frame["sdpa_backend_used"].notna().any():
        out["SDPA kernel"] = frame["sdpa_backend_used"]
    out["params M"] = frame["params"] / 1e6
    return out


def speed_up_facts(spec, ctx, frame: pd.DataFrame) -> list[Fact]:
    """For the index: each variant's speed-up over the ratio's baseline at (headline N, M) and at the largest
    N measured with that M, and its parameters, each pointing at its row of the profile table."""
    baseline = spec.ratio.baseline
    facts = []
    at_m = frame[frame["n_target"] == spec.headline_m]
    settings = [(spec.headline_n, spec.headline_m)] + ([(int(at_m["n_input"].max()), spec.headline_m)] if not at_m.empty else [])
    for n, m in dict.fromkeys(settings):
        base = frame[(frame["model"] == baseline) & (frame["n_input"] == n) & (frame["n_target"] == m)]
        if base.empty:
            continue
        for index, row in frame[(frame["n_input"] == n) & (frame["n_target"] == m)].iterrows():
            facts.append(Fact(variant=row["model"], quantity=f"speed-up over {label(baseline)}, N={n}, M={m}",
                              value=float(base["latency_ms"].iloc[0]) / float(row["latency_ms"]), unit="x", better="higher",
                              table=spec.name, row=int(index)))
    for name, group in frame.groupby("model", sort=False):
        facts.append(Fact(variant=name, quantity=f"parameters (M), preset {ctx.preset}", value=float(group["params"].iloc[0]) / 1e6,
                          unit="M", table=spec.name, row=int(group.index[0])))
    return facts


def _alternating_headline(pair: str, spec, rows: list[dict[str, Any]]) -> list[str]:
    """The headline ratio from the pair point (the two models timed in alternation), or why not."""
    for r in rows:
        if r.get("status") == "ok":
            return [f"{pair} at N={spec.headline_n}, M={spec.headline_m}, timed in alternation ({r['rounds']} rounds): "
                    f"latency ratio {r['latency_ratio']:.3f} (IQR {r['latency_ratio_iqr']:.3f}; speed-up "
                    f"{1 / r['latency_ratio']:.2f}x; {r['first_ms']:.2f} vs {r['second_ms']:.2f} ms)"]
        return [f"{pair} at N={spec.headline_n}, M={spec.headline_m}, timed in alternation: not measured ({r.get('error')})"]
    return []


def profile_report(spec, ctx, rows: list[dict[str, Any]], expected: int) -> Report:
    pair_rows = [r for r in rows if "pair" in r]
    rows = [r for r in rows if "pair" not in r]
    expected -= int(all(name in spec.models for name in spec.ratio.names))
    notes = ctx.notes(rows) + [
        f"latency: median and IQR of the timed runs after warm-up ({'CUDA events' if ctx.device.type == 'cuda' else 'time.perf_counter'}); "
        f"SDPA backend {spec.measure.sdpa_backend}; torch.compile {'on (compile time apart)' if spec.measure.compile else 'off'}",
        "memory: " + ("torch.cuda.max_memory_allocated (reserved: max_memory_reserved)" if ctx.device.type == "cuda"
                      else "process peak RSS (VmHWM reset per point via /proc/self/clear_refs); baseline = RSS before the timed runs"),
        "GFLOPs: FlopCounterMode on meta, 2 FLOPs per multiply-add, attention matmuls included; "
        "thop GMACs: linear layers only, the convention of the published GFLOPs column",
        f"MFU: counted FLOPs / median latency, over the TFLOP/s of a {'8192' if ctx.device.type == 'cuda' else '2048'}^3 "
        f"{ctx.dtype} matmul measured in the same run"
        + (f" ({rows[0]['matmul_peak_tflops']:.2f} TFLOP/s)" if rows and rows[0].get("matmul_peak_tflops") else ""),
    ] + failure_notes(rows, ["model", "n_input", "n_target"]) + _unmeasured(rows, expected)
    frame = ok_frame(rows)
    result = Report(spec.name, notes)
    if frame.empty:
        result.tables.append(Table(spec.name, f"{spec.name}: nothing measured yet", pd.DataFrame(), notes))
        return result
    frame["work_mem_mb"] = pd.to_numeric(frame["peak_mem_mb"]) - pd.to_numeric(frame["baseline_mem_mb"])
    frame = frame.sort_values(["model", "n_target", "n_input"]).reset_index(drop=True)
    notes += noisy_note(frame, spec.measure.noisy_iqr)
    result.tables.append(Table(spec.name, f"{spec.name}: cost against the number of input views", profile_table(frame), notes))
    result.facts += speed_up_facts(spec, ctx, frame)

    numerator, denominator = spec.ratio.names
    ratios = ratio_table(frame.rename(columns={"n_input": "N", "n_target": "M"}), numerator, denominator, ["N", "M"],
                         {"latency_ms": "latency ratio", "gflops": "FLOPs ratio", "gmacs_linear_thop": "thop MACs ratio"})
    if not ratios.empty:
        pair = f"{label(numerator)} / {label(denominator)}"
        alternating = _alternating_headline(pair, spec, pair_rows)
        published_line = []
        published = card_published(spec.card_table, spec.ratio.names)
        if len(published) == 2 and all("latency_ms" in p for p in published.values()):
            a, b = (published[m] for m in spec.ratio.names)
            published_line = [f"published latency ratio {a['latency_ms'] / b['latency_ms']:.3f} "
                              f"({b['latency_ms'] / a['latency_ms']:.1f}x; source: {a['source']})"]
        ratio_notes = [f"ratios = {pair} at the same N, M, each from its own point ({notes[1]})", *alternating, *published_line]
        result.tables.append(Table("ratios", pair, ratios, ratio_notes))
        result.headlines += alternating
        hit = ratios[(ratios["N"] == spec.headline_n) & (ratios["M"] == spec.headline_m)]
        if not hit.empty:
            r = hit.iloc[0]
            result.headlines.append(
                f"{pair} at N={spec.headline_n}, M={spec.headline_m}, from the points (measured one after another): "
                f"latency ratio {r['latency ratio']:.3f} "
                f"(speed-up {1 / r['latency ratio']:.2f}x), FLOPs ratio {r['FLOPs ratio']:.3f} "
                f"({1 / r['FLOPs ratio']:.2f}x fewer), thop linear-MACs ratio {r['thop MACs ratio']:.3f}")
        result.headlines += [line.replace("published latency ratio", "published: latency ratio", 1) for line in published_line]

    slopes = exponents(frame, "n_input", {"latency_ms": "latency exponent", "gflops": "FLOPs exponent",
                                          "work_mem_mb": "memory exponent"}, ["model", "n_target"], spec.fit)
    slopes = slopes.rename(columns={"n_target": "M"})
    slopes["model"] = slopes["model"].map(label)
    result.tables.append(Table("exponents", f"Growth exponents in N (log-log fit over {fit_text(spec.fit)})", slopes,
                               notes[1:3], floatfmt=".2f"))
    result.figures["cost_vs_views.png"] = lambda: loglog(
        frame, "n_input", PROFILE_METRICS, "n_target", "model", spec.fit,
        f"{spec.name} ({ctx.env['device']}, {ctx.dtype}, preset {ctx.preset}, {ctx.image_size} px)")
    return result


# ------------------------------------------------------------------------------------------ FLOPs


def quantity_columns(frame: pd.DataFrame, quantity: str, keys: Sequence[str] = ("N",)) -> dict[str, dict[str, str]]:
    """Every column of a wide table (one per variant) but its keys holds `quantity`."""
    return {str(c): {"quantity": quantity} for c in frame.columns if c not in keys}


def wide(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """N down the side; one column per (variant, M)."""
    frame = frame.assign(series=[f"{label(m)} M={t}" for m, t in zip(frame["model"], frame["n_target"])])
    table = frame.pivot_table(index="n_input", columns="series", values=column, sort=False).reset_index()
    # Object dtype keeps N an int when tabulate turns the all-numeric frame into one float array.
    table["n_input"] = table["n_input"].astype(int).astype(object)
    return table.rename(columns={"n_input": "N"})


def flops_report(spec, ctx, rows: list[dict[str, Any]], expected: int) -> Report:
    notes = ctx.notes(rows) + [
        "GFLOPs = 2 x multiply-adds of linear layers and attention matmuls (norms, softmax, GELU left out)",
        "thop GMACs = linear-layer multiply-adds only, as `thop` counts (the published GFLOPs column)",
        "what is counted: this code's forward as it executes, equal to its analytic formula; the official code's own "
        "forward is counted beside ours in results/parity (make parity): LVSM family +18 FLOPs per pixel per view for "
        "its rays' batched matmul, LaCT about 2% more from work whose outputs nothing reads (target keys, values and "
        "learning rates; the last block's apply and MLP on input tokens)",
    ] + failure_notes(rows, ["model", "n_input", "n_target"]) + _unmeasured(rows, expected)
    notes += published_notes(spec.card_table, spec.models, ["gflops_thop"])
    frame = ok_frame(rows)
    result = Report(f"{spec.name}: forward GFLOPs", notes)
    if frame.empty:
        return result
    frame = frame.sort_values(["model", "n_target", "n_input"])
    notes.append(f"FlopCounterMode vs analytic formula: largest relative difference {frame['flops_rel_diff'].max():.2e}")
    long = pd.DataFrame({"model": _labelled(frame), "N": frame["n_input"], "M": frame["n_target"],
                         "GFLOPs (counted)": frame["gflops"], "GFLOPs (analytic)": frame["gflops_analytic"],
                         "rel. diff": frame["flops_rel_diff"], "thop GMACs (linear only)": frame["gmacs_linear_thop"],
                         "attention GMACs": frame["gmacs_attention"]})
    result.tables.append(Table(spec.name, "Forward FLOPs against the number of input views", long, notes, console=False))
    gflops, gmacs = wide(frame, "gflops"), wide(frame, "gmacs_linear_thop")
    result.tables.append(Table("gflops_wide", "Forward GFLOPs (counted)", gflops, notes, floatfmt=",.1f",
                               columns=quantity_columns(gflops, "flops")))
    result.tables.append(Table("thop_gmacs_wide", "thop-style GMACs (linear layers only)", gmacs, notes, floatfmt=",.1f",
                               console=False, columns=quantity_columns(gmacs, "macs")))
    slopes = exponents(frame, "n_input", {"gflops": f"FLOPs exponent ({fit_text(spec.fit)})"}, ["model", "n_target"],
                       spec.fit)
    slopes = slopes.rename(columns={"n_target": "M"}).reset_index(drop=True)
    first_m = min(spec.n_targets)
    result.facts += [Fact(variant=row["model"], quantity=f"FLOP exponent in N ({fit_text(spec.fit)}, M={first_m})",
                          value=float(row.iloc[2]), table="exponents", row=int(index))
                     for index, row in slopes.iterrows() if row["M"] == first_m and pd.notna(row.iloc[2])]
    slopes["model"] = slopes["model"].map(label)
    result.tables.append(Table("exponents", "Growth exponents of forward FLOPs in N", slopes, notes[:2], floatfmt=".2f"))
    result.figures["flops_vs_views.png"] = lambda: loglog(
        frame, "n_input", {"gflops": "GFLOPs (2 x MAC)", "gmacs_linear_thop": "thop GMACs (linear only)"},
        "n_target", "model", spec.fit, f"forward FLOPs counted on the meta device, preset {ctx.preset}, {ctx.image_size} px")
    for _, row in slopes.iterrows():
        if row["M"] == min(spec.n_targets):
            fitted = row.iloc[2]
            result.headlines.append(f"{row['model']}, M={row['M']}: " + (
                f"FLOPs grow as N^{fixed(fitted)} ({fit_text(spec.fit)})" if pd.notna(fitted) else
                f"no FLOP exponent: fewer than two measured N in {fit_text(spec.fit)} (fit_n)"))
    published = card_published(spec.card_table, spec.models)
    if len(published) >= 2:
        a, b = (published[m] for m in list(published)[:2])
        at = frame[(frame["n_input"] == 2) & (frame["n_target"] == 1)].set_index("model")["gmacs_linear_thop"]
        names = list(published)[:2]
        if set(names) <= set(at.index):
            ours = at[names[0]] / at[names[1]]
            result.headlines.append(f"thop GMACs {label(names[0])} / {label(names[1])} at N=2, M=1: ours {ours:.2f}x "
                                    f"(preset {ctx.preset}); published {a['gflops_thop'] / b['gflops_thop']:.2f}x "
                                    f"({a['gflops_thop']} / {b['gflops_thop']} GFLOPs, setting not stated; {a['source']})")
    return result


# --------------------------------------------------------------------------------------- KV cache


def kv_cache_report(spec, ctx, rows: list[dict[str, Any]], expected: int) -> Report:
    frame = ok_frame(rows)
    # One list, shared by the report and its first table: the noisy note below (and the run's summary
    # line the caller puts first) head that table too.
    notes = _kv_cache_notes(spec, ctx, rows, expected)
    result = Report(spec.name, notes)
    if frame.empty:
        return result
    notes += noisy_note(frame, spec.measure.noisy_iqr)
    published = {r.n: r for r in (spec.published.rows if spec.published else [])}
    table = _kv_cache_table(spec, frame, published)
    published_columns = {"published cached ms": {"role": "published", "setting": "published"},
                         "published recompute ms": {"role": "published", "setting": "published"},
                         "published speed-up": {"role": "ratio", "setting": "published"}}
    result.tables.append(Table(
        spec.name, "Adding one input view: KV cache vs recomputing", missing_as_none(table), notes,
        columns=published_columns, settings={"published": spec.published.setting} if spec.published else {},
        compare=[("cached ms", "published cached ms"), ("recompute ms", "published recompute ms")] if published else []))
    result.headlines += _kv_cache_headline(spec, ctx, table, published)
    extra = _published_latencies(published)
    result.tables.append(Table("exponents", f"Growth exponents in N (fit over {fit_text(spec.fit)})",
                               _kv_cache_exponents(spec, frame, extra), notes[:2], floatfmt=".2f"))
    result.figures["kv_cache.png"] = lambda: loglog(
        frame, "n_cached", {"latency_ms": "latency (ms)", "gflops": "GFLOPs"}, None, "model", spec.fit,
        f"add {spec.n_new} view + render {spec.n_targets} ({ctx.env['device']}, {ctx.dtype}, preset {ctx.preset}, "
        f"{ctx.image_size} px)", extra)
    return result


def _kv_cache_notes(spec, ctx, rows: list[dict[str, Any]], expected: int) -> list[str]:
    notes = ctx.notes(rows) + [
        f"cached: {label(spec.ratio.model)} adds {spec.n_new} view(s) to a KV cache of N views, then renders "
        f"{spec.n_targets} targets; recompute: {label(spec.ratio.baseline)} renders the {spec.n_targets} targets "
        f"from all N+{spec.n_new} views",
    ] + [
        f"rebuild: {label(name)} keeps no cache that a view can be added to: its {model_class(name).scene_state} are "
        f"rebuilt from all N+{spec.n_new} views (a forward pass); an incremental update (the new view's fast-weight "
        "gradients added to those of the N views, `extend_scene`) is not exact from the second block on, since "
        "the N views' tokens depend on the earlier blocks' fast weights, which the new view changes: "
        f"'{label(name)} incremental PSNR dB' is its render against the rebuilt one (same weights)"
        for name in spec.rebuild_models
    ] + [
        "latency: median (IQR) of the timed runs after warm-up; GFLOPs: FlopCounterMode on meta, 2 x MAC, attention included",
    ] + failure_notes(rows, ["model", "mode", "n_cached"]) + _unmeasured(rows, expected)
    if spec.published:
        notes.append(f"published: {spec.published.source}")
    return notes


def _kv_cache_table(spec, frame: pd.DataFrame, published: Mapping[int, Any]) -> pd.DataFrame:
    """One row per N: cached against recomputed (latency, FLOPs, memory), the published times beside
    ours, and each rebuilt variant's cost and how far its incremental update renders from the rebuild."""
    cached = frame[frame["mode"] == "kv_cache"].set_index("n_cached")
    full = frame[frame["mode"] == "recompute"].set_index("n_cached")
    ns = sorted(set(cached.index) | set(full.index))
    table = pd.DataFrame({"N": ns})
    table["cached ms"] = [cached["latency_ms"].get(n) for n in ns]
    table["cached IQR"] = [cached["latency_iqr_ms"].get(n) for n in ns]
    table["recompute ms"] = [full["latency_ms"].get(n) for n in ns]
    table["recompute IQR"] = [full["latency_iqr_ms"].get(n) for n in ns]
    table["noisy"] = ["noisy" if bool(cached["noisy"].get(n, False)) or bool(full["noisy"].get(n, False)) else ""
                      for n in ns] if "noisy" in frame else ""
    table["speed-up"] = table["recompute ms"] / table["cached ms"]
    if published:
        table["published cached ms"] = [published[n].cached_ms if n in published else None for n in ns]
        table["published recompute ms"] = [published[n].recompute_ms if n in published else None for n in ns]
        table["published speed-up"] = table["published recompute ms"] / table["published cached ms"]
    table["cached GFLOPs"] = [cached["gflops"].get(n) for n in ns]
    table["recompute GFLOPs"] = [full["gflops"].get(n) for n in ns]
    table["FLOPs ratio"] = table["recompute GFLOPs"] / table["cached GFLOPs"]
    for name in spec.rebuild_models:
        rebuilt = frame[(frame["mode"] == "rebuild") & (frame["model"] == name)].set_index("n_cached")
        table[f"{label(name)} rebuild ms"] = [rebuilt["latency_ms"].get(n) for n in ns]
        table[f"{label(name)} rebuild GFLOPs"] = [rebuilt["gflops"].get(n) for n in ns]
        table[f"{label(name)} incremental PSNR dB"] = [rebuilt["incremental_psnr_db"].get(n) for n in ns]
        table[f"{label(name)} incremental max abs"] = [rebuilt["incremental_max_abs"].get(n) for n in ns]
    table["KV cache MiB"] = [cached["kv_cache_mb"].get(n) for n in ns]
    table["cached peak MiB"] = [cached["peak_mem_mb"].get(n) for n in ns]
    table["recompute peak MiB"] = [full["peak_mem_mb"].get(n) for n in ns]
    return table


def _kv_cache_headline(spec, ctx, table: pd.DataFrame, published: Mapping[int, Any]) -> list[str]:
    """The speed-up at the largest N measured in both modes, beside the published one at that N."""
    measured = table.dropna(subset=["speed-up"])
    if measured.empty:
        return []
    last = measured.iloc[-1]
    line = (f"adding {spec.n_new} view to N={int(last['N'])} and rendering {spec.n_targets}: KV cache {last['cached ms']:.1f} ms vs "
            f"recompute {last['recompute ms']:.1f} ms, {last['speed-up']:.1f}x (ours, {ctx.env['device']}, preset {ctx.preset})")
    if published and int(last["N"]) in published:
        p = published[int(last["N"])]
        line += f"; published {p.recompute_ms / p.cached_ms:.1f}x ({p.cached_ms} vs {p.recompute_ms} ms)"
    return [line]


def _published_latencies(published: Mapping[int, Any]) -> dict[str, pd.DataFrame]:
    """The published cached and recomputed latencies against N, as series to plot and fit beside ours."""
    if not published:
        return {}
    pub = pd.DataFrame([r.model_dump() for r in published.values()]).sort_values("n").rename(columns={"n": "n_cached"})
    return {"published cached": pub.rename(columns={"cached_ms": "latency_ms"})[["n_cached", "latency_ms"]],
            "published recompute": pub.rename(columns={"recompute_ms": "latency_ms"})[["n_cached", "latency_ms"]]}


def _kv_cache_exponents(spec, frame: pd.DataFrame, extra: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    slopes = exponents(frame, "n_cached", {"latency_ms": "latency exponent", "gflops": "FLOPs exponent"},
                       ["model", "mode"], spec.fit)
    slopes["model"] = slopes["model"].map(label)
    for ref_label, ref in extra.items():
        slope = growth_exponent(ref["n_cached"], ref["latency_ms"], spec.fit)
        slopes = pd.concat([slopes, pd.DataFrame([{"model": ref_label, "mode": "published", "latency exponent": slope}])])
    return slopes


# ------------------------------------------------------------------------------------- efficiency


def efficiency_report(spec, ctx, rows: list[dict[str, Any]], search: tuple[list, list] = ([], [])) -> Report:
    pair_rows = [r for r in rows if "pair" in r]
    rows = [r for r in rows if "pair" not in r]
    frame = ok_frame(rows)
    notes = ctx.notes(rows) + [f"ours: N={spec.n_input} input views, M={spec.n_target} target view(s)"]
    from_cards = card_published(spec.card_table, spec.models)
    notes += sorted({f"published: {row['source']}" for row in from_cards.values()})
    if spec.published:
        notes.append(f"published (other methods): {spec.published.source}")
    notes += failure_notes(rows, ["model"])
    ours = frame.set_index("model") if not frame.empty else pd.DataFrame()
    notes += noisy_note(frame, spec.measure.noisy_iqr) if not frame.empty else []
    others = {r.label: r.model_dump() for r in (spec.published.rows if spec.published else [])}
    slow, fast = spec.ratio.baseline, spec.ratio.model
    base_pub = (from_cards.get(slow) or {})
    base_ours = ours.loc[slow] if slow in ours.index else None

    def per(value: Any, base: Any) -> float | None:
        return value / base if value is not None and base else None

    table_rows = []
    for name in [*spec.models, *others]:
        pub, have = from_cards.get(name) or others.get(name, {}), name in ours.index
        mine = ours.loc[name] if have else None
        table_rows.append({
            "model": label(name),
            "params M (ours)": mine["params"] / 1e6 if have else None,
            "params M (published)": pub.get("params_m"),
            "latency ms (ours)": mine["latency_ms"] if have else None,
            "IQR ms": mine["latency_iqr_ms"] if have else None,
            "noisy": ("noisy" if mine.get("noisy") is True else "") if have else None,
            "latency ms (published)": pub.get("latency_ms"),
            f"latency / {label(slow)} (ours)": per(mine["latency_ms"], base_ours["latency_ms"]) if have and base_ours is not None else None,
            f"latency / {label(slow)} (published)": per(pub.get("latency_ms"), base_pub.get("latency_ms")),
            "GFLOPs (ours, all matmuls)": mine["gflops"] if have else None,
            "thop GMACs (ours, linear only)": mine["gmacs_linear_thop"] if have else None,
            "GFLOPs (published, thop)": pub.get("gflops_thop"),
            f"thop / {label(slow)} (ours)": per(mine["gmacs_linear_thop"], base_ours["gmacs_linear_thop"])
            if have and base_ours is not None else None,
            f"thop / {label(slow)} (published)": per(pub.get("gflops_thop"), base_pub.get("gflops_thop")),
            "peak mem MiB (ours)": mine["peak_mem_mb"] if have else None,
        })
    result = Report(spec.name, notes)
    for r in pair_rows:
        result.headlines.append(
            f"ours, timed in alternation ({r['rounds']} rounds): {label(slow)} / {label(fast)} latency "
            f"{r['latency_ratio']:.2f}x (IQR {r['latency_ratio_iqr']:.2f})" if r.get("status") == "ok" else
            f"ours, timed in alternation: not measured ({r.get('error')})")
    if {slow, fast} <= set(ours.index):
        result.headlines.append(
            f"ours, from the rows: {label(slow)} / {label(fast)} latency "
            f"{ours.loc[slow, 'latency_ms'] / ours.loc[fast, 'latency_ms']:.2f}x, "
            f"FLOPs {ours.loc[slow, 'gflops'] / ours.loc[fast, 'gflops']:.2f}x, "
            f"thop MACs {ours.loc[slow, 'gmacs_linear_thop'] / ours.loc[fast, 'gmacs_linear_thop']:.2f}x")
    if {slow, fast} <= set(from_cards):
        a, b = from_cards[slow], from_cards[fast]
        result.headlines.append(f"published: latency {a['latency_ms'] / b['latency_ms']:.2f}x, "
                                f"GFLOPs (thop) {a['gflops_thop'] / b['gflops_thop']:.2f}x")
    published_setting = published_setting_of(spec)
    thop_setting = measured_setting(rows, counting=THOP)
    declared = {name: {"role": "published", "setting": "published"}
                for name in ("params M (published)", "latency ms (published)", "GFLOPs (published, thop)")}
    declared.update({name: {"role": "ratio", "quantity": "ratio", "setting": "published" if "published" in name else "ours"}
                     for name in table_rows[0] if name.startswith(("latency / ", "thop / "))} if table_rows else {})
    declared["GFLOPs (ours, all matmuls)"] = {"quantity": "flops"}
    declared["thop GMACs (ours, linear only)"] = {"quantity": "flops", "setting": "ours, thop"}
    result.tables.append(Table(
        spec.name, f"Efficiency: ours beside the published table (ours: {spec.n_input} input, {spec.n_target} target views)",
        missing_as_none(pd.DataFrame(table_rows)), notes + result.headlines, columns=declared,
        status=["ok" if name in ours.index else "published" if name in others or name in from_cards else "failed"
                for name in [*spec.models, *others]],
        settings={"published": published_setting, "ours, thop": thop_setting},
        compare=[("params M (ours)", "params M (published)"), ("latency ms (ours)", "latency ms (published)"),
                 ("thop GMACs (ours, linear only)", "GFLOPs (published, thop)")]))
    found, counted = search
    s = spec.setting_search
    where = (f"searched: N, M = 1..{s.max_views} at {', '.join(f'{px} px' for px in s.image_sizes)}, the paper-size models' "
             f"thop count (linear layers) against every published GFLOPs (thop) figure at once, within {s.tolerance:.0%}")
    if found:
        best = found[0]
        inferred = (f"inferred published setting: N={best['N']} input and M={best['M']} target views at {best['px']} px "
                    f"(our inference: the table states no setting; {len(found)} setting(s) within {s.tolerance:.0%})")
        result.headlines.insert(0, inferred)
        result.tables.append(Table("setting_search", "The published table's unstated view setting, found by FLOPs",
                                   pd.DataFrame(found), [where, inferred], floatfmt=",.4g"))
        frame_counted = pd.DataFrame(counted).assign(model=lambda f: f["model"].map(label))
        frame_counted["thop / published"] = frame_counted["thop GMACs (linear only)"] / frame_counted["published GFLOPs (thop)"]
        by = frame_counted.set_index("model")
        if len(by) >= 2:
            a, b = by.index[0], by.index[1]

            def of(column: str) -> float:
                return by.loc[a, column] / by.loc[b, column]

            result.headlines.append(f"at the inferred setting, paper preset: {a} / {b} thop {of('thop GMACs (linear only)'):.2f}x "
                                    f"(published {of('published GFLOPs (thop)'):.2f}x), all matmuls "
                                    f"{of('GFLOPs (all matmuls, counted)'):.2f}x")
        same = ("counted on the meta device (FlopCounterMode) at the paper preset and the setting inferred from the published "
                "GFLOPs themselves (the source states none): 'thop / published' checks that inference; it is not an "
                "independent reproduction")
        counted_setting = Setting.model_validate({
            "device": {"name": "meta (shapes only)"}, "model": {"preset": "paper", "image_size": best["px"]},
            "views": {"n_input": best["N"], "n_target": best["M"]}, "counting": THOP})
        result.tables.append(Table(
            "flops_at_published_setting", "FLOPs at the inferred setting, paper preset, beside the published", frame_counted,
            [where, inferred, same], floatfmt=",.4g",
            columns={"published GFLOPs (thop)": {"role": "published", "setting": "published", "quantity": "flops"},
                     "thop / published": {"role": "ratio", "quantity": "ratio"},
                     "thop GMACs (linear only)": {"quantity": "flops"}},
            settings={"ours": counted_setting, "published": published_setting},
            compare=[("thop GMACs (linear only)", "published GFLOPs (thop)")]))
    else:
        result.notes.append(where + ": no setting matched")
    return result
