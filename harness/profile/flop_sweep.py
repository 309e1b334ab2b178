"""Kind `profile_flops`: forward FLOPs of each variant for N input and M target views, counted with
FlopCounterMode on the meta device and set beside the analytic formula (experiments/flops.yaml)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..experiment import register_kind
from ..tables import markdown, write_tables
from . import report
from .flops import FlopCounter
from .spec import ViewGridSpec, resolve_context


@dataclass
class FlopsExperiment(ViewGridSpec):
    preset: str = "paper"


def wide(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """N down the side; one column per (variant, M)."""
    frame = frame.assign(series=[f"{report.LABELS.get(m, m)} M={t}" for m, t in zip(frame["model"], frame["n_target"])])
    table = frame.pivot_table(index="n_input", columns="series", values=column, sort=False).reset_index()
    # Object dtype keeps N an int when tabulate turns the all-numeric frame into one float array.
    table["n_input"] = table["n_input"].astype(int).astype(object)
    return table.rename(columns={"n_input": "N"})


@register_kind("profile_flops", FlopsExperiment)
def run_flops(spec: FlopsExperiment, preset: str | None = None, progress: bool = True) -> list[dict[str, Any]]:
    ctx = resolve_context(spec, preset, device="meta")
    points = [ctx.point(model=model, n_input=n, n_target=m, batch=spec.batch)
              for model in spec.models for m in spec.n_targets for n in sorted(spec.n_inputs)]
    counter = FlopCounter(ctx.config)

    def measure(point: dict[str, Any]) -> dict[str, Any]:
        count = counter.forward(point["model"], point["n_input"], point["n_target"], point["batch"])
        return {"params": counter.model(point["model"]).num_parameters(), **count.columns()}

    sweep = ctx.sweep(spec)
    summary = sweep.run(points, measure, lambda p: f"{p['model']} N={p['n_input']} M={p['n_target']}", progress)
    rows = sweep.rows(points)
    frame = report.ok_frame(rows)
    out_dir = spec.results_dir()
    notes = ctx.notes(spec, rows) + ["GFLOPs = 2 x multiply-adds of linear layers and attention matmuls (norms, softmax, GELU left out)",
                               "thop GMACs = linear-layer multiply-adds only, as `thop` counts (the published GFLOPs column)"]
    notes += report.failures(rows, ["model", "n_input", "n_target"])
    notes += report.published_notes(spec.published)
    print(f"{spec.name}: {summary.measured} counted, {summary.skipped} already recorded, {len(summary.failed)} failed")
    if frame.empty:
        print("no point counted successfully")
        return rows
    frame = frame.sort_values(["model", "n_target", "n_input"])
    worst = frame["flops_rel_diff"].max()
    notes.append(f"FlopCounterMode vs analytic formula: largest relative difference {worst:.2e}")
    long = pd.DataFrame({"model": frame["model"].map(lambda m: report.LABELS.get(m, m)), "N": frame["n_input"],
                         "M": frame["n_target"], "GFLOPs (counted)": frame["gflops"], "GFLOPs (analytic)": frame["gflops_analytic"],
                         "rel. diff": frame["flops_rel_diff"], "thop GMACs (linear only)": frame["gmacs_linear_thop"],
                         "attention GMACs": frame["gmacs_attention"]})
    paths = write_tables(long, out_dir, spec.name, "Forward FLOPs against the number of input views", notes)
    gflops = wide(frame, "gflops")
    write_tables(gflops, out_dir, "gflops_wide", "Forward GFLOPs (counted)", notes, floatfmt=",.1f")
    write_tables(wide(frame, "gmacs_linear_thop"), out_dir, "thop_gmacs_wide", "thop-style GMACs (linear layers only)",
                 notes, floatfmt=",.1f")
    slopes = report.exponents(frame, "n_input", {"gflops": f"FLOPs exponent (N >= {spec.fit_min_n})"},
                              ["model", "n_target"], spec.fit_min_n)
    slopes_all = report.exponents(frame, "n_input", {"gflops": "FLOPs exponent (all N)"}, ["model", "n_target"], 1)
    slopes = slopes.merge(slopes_all, on=["model", "n_target"]).rename(columns={"n_target": "M"})
    slopes["model"] = slopes["model"].map(lambda m: report.LABELS.get(m, m))
    write_tables(slopes, out_dir, "exponents", "Growth exponents of forward FLOPs in N", notes[:2])
    figure = report.loglog(frame, out_dir / "flops_vs_views.png", "n_input",
                           {"gflops": "GFLOPs (2 x MAC)", "gmacs_linear_thop": "thop GMACs (linear only)"},
                           "n_target", "model", spec.fit_min_n, f"forward FLOPs, preset {ctx.preset}")
    print("\n".join([f"# {spec.name}: forward GFLOPs", *[f"- {n}" for n in notes], "", markdown(gflops, floatfmt=",.1f"), "",
                     "## Growth exponents in N", "", markdown(slopes, floatfmt=".2f"), "",
                     f"wrote {paths['md']}, {out_dir / 'gflops_wide.md'}, {out_dir / 'exponents.md'}, {figure}"]))
    return rows
