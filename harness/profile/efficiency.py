"""Kind `profile_efficiency`: the published efficiency table (params, latency, GFLOPs) with our
measurements beside it, at one view setting (experiments/efficiency_table.yaml)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..experiment import register_kind
from ..tables import markdown, write_tables
from . import report
from .forward import forward_measure
from .spec import MeasuredSpec, check_model_list, resolve_context

PUBLISHED_KEYS = ("label", "params_m", "latency_ms", "gflops_thop")


@dataclass
class EfficiencyExperiment(MeasuredSpec):
    models: list[str] = field(default_factory=lambda: ["lvsm_decoder_only", "efficient_lvsm"])
    n_input: int = 2
    n_target: int = 1
    # The pair whose latency and FLOPs ratio is compared with the published one.
    baseline_model: str = "lvsm_decoder_only"
    fast_model: str = "efficient_lvsm"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_model_list(self.models)
        if self.n_input <= 0 or self.n_target <= 0:
            raise ValueError(f"n_input, n_target: expected positive ints, got {self.n_input}, {self.n_target}")
        for i, row in enumerate(self.published.rows if self.published else []):
            if any(k not in row for k in PUBLISHED_KEYS):
                raise ValueError(f"published.rows[{i}]: expected keys {list(PUBLISHED_KEYS)} (and `model` for ours), got {row}")


def build_table(spec: EfficiencyExperiment, frame: pd.DataFrame) -> pd.DataFrame:
    ours = frame.set_index("model") if not frame.empty else pd.DataFrame()
    published = list(spec.published.rows) if spec.published else []
    names = list(spec.models) + [r.get("model") or r["label"] for r in published if (r.get("model") or r["label"]) not in spec.models]
    by_model = {r.get("model") or r["label"]: r for r in published}
    rows = []
    for name in names:
        pub, have = by_model.get(name, {}), name in ours.index
        rows.append({
            "model": report.LABELS.get(name, pub.get("label", name)),
            "params M (ours)": ours.loc[name, "params"] / 1e6 if have else None,
            "params M (published)": pub.get("params_m"),
            "latency ms (ours)": ours.loc[name, "latency_ms"] if have else None,
            "IQR ms": ours.loc[name, "latency_iqr_ms"] if have else None,
            "latency ms (published)": pub.get("latency_ms"),
            "GFLOPs (ours, 2xMAC incl. attn)": ours.loc[name, "gflops"] if have else None,
            "thop GMACs (ours, linear only)": ours.loc[name, "gmacs_linear_thop"] if have else None,
            "GFLOPs (published, thop)": pub.get("gflops_thop"),
            "peak mem MiB (ours)": ours.loc[name, "peak_mem_mb"] if have else None,
        })
    return report.blank_missing(pd.DataFrame(rows))


def speedups(spec: EfficiencyExperiment, frame: pd.DataFrame) -> list[str]:
    ours = frame.set_index("model") if not frame.empty else pd.DataFrame()
    pub = {r.get("model"): r for r in (spec.published.rows if spec.published else [])}
    slow, fast = spec.baseline_model, spec.fast_model
    lines = []
    if {slow, fast} <= set(ours.index):
        lines.append(f"ours: {report.LABELS[slow]} / {report.LABELS[fast]} latency {ours.loc[slow, 'latency_ms'] / ours.loc[fast, 'latency_ms']:.2f}x, "
                     f"FLOPs {ours.loc[slow, 'gflops'] / ours.loc[fast, 'gflops']:.2f}x, "
                     f"thop MACs {ours.loc[slow, 'gmacs_linear_thop'] / ours.loc[fast, 'gmacs_linear_thop']:.2f}x")
    if {slow, fast} <= set(pub):
        lines.append(f"published: latency {pub[slow]['latency_ms'] / pub[fast]['latency_ms']:.2f}x, "
                     f"GFLOPs (thop) {pub[slow]['gflops_thop'] / pub[fast]['gflops_thop']:.2f}x")
    return lines


def build_report(spec: EfficiencyExperiment, ctx, rows: list[dict[str, Any]]) -> list[str]:
    frame = report.ok_frame(rows)
    notes = ctx.notes(spec, rows) + [f"ours: N={spec.n_input} input views, M={spec.n_target} target view(s)"]
    if spec.published:
        notes.append(f"published: {spec.published.source}")
    notes += report.failures(rows, ["model"])
    ratio_lines = speedups(spec, frame)
    table = build_table(spec, frame)
    paths = write_tables(table, spec.results_dir(), spec.name, "Efficiency: ours beside the published table", notes + ratio_lines)
    return [f"# {spec.name}", *[f"- {n}" for n in notes], "", markdown(table), "", *ratio_lines, "",
            f"wrote {paths['md']}"]


@register_kind("profile_efficiency", EfficiencyExperiment)
def run_efficiency(spec: EfficiencyExperiment, preset: str | None = None, progress: bool = True) -> list[dict[str, Any]]:
    ctx = resolve_context(spec, preset)
    settings = spec.measure_settings()
    points = [ctx.point(model=model, n_input=spec.n_input, n_target=spec.n_target, batch=spec.batch, **settings.key())
              for model in spec.models]
    return ctx.measure_and_report(spec, points, forward_measure(ctx, settings), lambda p: p["model"], progress,
                                  lambda rows: build_report(spec, ctx, rows))
