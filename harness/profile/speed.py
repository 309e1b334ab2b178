"""Kind `profile`: latency, peak memory and FLOPs of each variant over a grid of N input and M
target views (experiments/speed_vs_views.yaml, experiments/bench.yaml)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..experiment import register_kind
from ..tables import markdown, write_tables
from . import report
from .forward import forward_measure
from .spec import MeasuredSpec, ViewGridSpec, resolve_context

NUMERATOR, DENOMINATOR = "efficient_lvsm", "lvsm_decoder_only"


@dataclass
class ProfileExperiment(ViewGridSpec, MeasuredSpec):
    # The setting whose Efficient-LVSM / decoder-only ratios are printed as the headline.
    headline_n: int = 2
    headline_m: int = 1


METRICS = {"latency_ms": "latency (ms)", "gflops": "GFLOPs (2 x MAC, attention incl.)",
           "work_mem_mb": "peak - baseline memory (MiB)"}


def table(frame: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({
        "model": frame["model"].map(lambda m: report.LABELS.get(m, m)), "N": frame["n_input"], "M": frame["n_target"],
        "latency ms (median)": frame["latency_ms"], "IQR ms": frame["latency_iqr_ms"], "runs": frame["runs"],
        "peak mem MiB": frame["peak_mem_mb"], "peak - baseline MiB": frame["work_mem_mb"],
    })
    if frame["peak_reserved_mb"].notna().any():
        out["reserved MiB"] = frame["peak_reserved_mb"]
    out["GFLOPs"] = frame["gflops"]
    out["thop GMACs (linear only)"] = frame["gmacs_linear_thop"]
    out["params M"] = frame["params"] / 1e6
    return out


def headline(ratios: pd.DataFrame, n: int, m: int) -> str | None:
    hit = ratios[(ratios["N"] == n) & (ratios["M"] == m)] if not ratios.empty else ratios
    if hit.empty:
        return None
    r = hit.iloc[0]
    return (f"Efficient-LVSM / LVSM decoder-only at N={n}, M={m}: latency ratio {r['latency ratio']:.3f} "
            f"(speed-up {1 / r['latency ratio']:.2f}x), FLOPs ratio {r['FLOPs ratio']:.3f} "
            f"({1 / r['FLOPs ratio']:.2f}x fewer), thop linear-MACs ratio {r['thop MACs ratio']:.3f}")


def build_report(spec: ProfileExperiment, ctx, rows: list[dict[str, Any]], expected: int) -> list[str]:
    out_dir = spec.results_dir()
    notes = ctx.notes(spec, rows) + [
        f"latency: median and IQR of the timed runs after warm-up ({'CUDA events' if ctx.device.type == 'cuda' else 'time.perf_counter'})",
        "memory: " + ("torch.cuda.max_memory_allocated (reserved: max_memory_reserved)" if ctx.device.type == "cuda"
                      else "process peak RSS (VmHWM reset per point via /proc/self/clear_refs); baseline = RSS before the timed runs"),
        "GFLOPs: FlopCounterMode on meta, 2 FLOPs per multiply-add, attention matmuls included; "
        "thop GMACs: linear layers only, the convention of the published GFLOPs column",
    ] + report.failures(rows, ["model", "n_input", "n_target"])
    if len(rows) < expected:
        notes.append(f"{expected - len(rows)} of {expected} points not measured yet (rerun to resume)")
    frame = report.ok_frame(rows)
    lines = []
    if frame.empty:
        write_tables(pd.DataFrame(), out_dir, spec.name, f"{spec.name}: nothing measured yet", notes)
        return ["no point measured successfully"] + notes
    frame["work_mem_mb"] = pd.to_numeric(frame["peak_mem_mb"]) - pd.to_numeric(frame["baseline_mem_mb"])
    frame = frame.sort_values(["model", "n_target", "n_input"])
    main = table(frame)
    paths = write_tables(main, out_dir, spec.name, f"{spec.name}: cost against the number of input views", notes)
    lines += [f"# {spec.name}", *[f"- {n}" for n in notes], "", markdown(main), ""]

    ratios = report.ratio_table(frame.rename(columns={"n_input": "N", "n_target": "M"}), NUMERATOR, DENOMINATOR, ["N", "M"],
                                {"latency_ms": "latency ratio", "gflops": "FLOPs ratio", "gmacs_linear_thop": "thop MACs ratio"})
    if not ratios.empty:
        ratio_notes = [f"ratios = Efficient-LVSM / LVSM decoder-only at the same N, M ({notes[0]})"]
        ratio_notes += report.published_notes(spec.published)
        write_tables(ratios, out_dir, "ratios", "Efficient-LVSM / LVSM decoder-only", ratio_notes)
        lines += ["## Efficient-LVSM / LVSM decoder-only", *[f"- {n}" for n in ratio_notes], "", markdown(ratios), ""]
        best = headline(ratios, spec.headline_n, spec.headline_m)
        if best:
            lines += [best, ""]

    slopes = report.exponents(frame, "n_input", {"latency_ms": "latency exponent", "gflops": "FLOPs exponent",
                                                 "work_mem_mb": "memory exponent"}, ["model", "n_target"], spec.fit_min_n)
    slopes = slopes.rename(columns={"n_target": "M"})
    slopes["model"] = slopes["model"].map(lambda m: report.LABELS.get(m, m))
    write_tables(slopes, out_dir, "exponents", f"Growth exponents in N (log-log fit over N >= {spec.fit_min_n})", notes[:2])
    lines += [f"## Growth exponents in N (fit over N >= {spec.fit_min_n})", "", markdown(slopes, floatfmt=".2f"), ""]
    figure = report.loglog(frame, out_dir / "cost_vs_views.png", "n_input", METRICS, "n_target", "model",
                           spec.fit_min_n, f"{spec.name} ({ctx.env['device']}, {ctx.dtype}, preset {ctx.preset})")
    lines.append(f"wrote {paths['md']}, {paths['csv']}, {paths['tex']}, {out_dir / 'ratios.md'}, {out_dir / 'exponents.md'}, {figure}")
    return lines


@register_kind("profile", ProfileExperiment)
def run_profile(spec: ProfileExperiment, preset: str | None = None, progress: bool = True) -> list[dict[str, Any]]:
    ctx = resolve_context(spec, preset)
    settings = spec.measure_settings()
    points = [ctx.point(model=model, n_input=n, n_target=m, batch=spec.batch, **settings.key())
              for m in spec.n_targets for n in sorted(spec.n_inputs) for model in spec.models]
    return ctx.measure_and_report(spec, points, forward_measure(ctx, settings),
                                  lambda p: f"{p['model']} N={p['n_input']} M={p['n_target']}", progress,
                                  lambda rows: build_report(spec, ctx, rows, len(points)))
