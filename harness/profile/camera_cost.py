"""Kind `profile_camera_encoding`: what putting the cameras inside attention (PRoPE, GTA) costs each
variant against Plücker raymaps on the tokens, over the number of input views.

Per (variant, encoding, N) the model with that encoding and the same model with raymaps are timed in
alternation, round after round, and the latency ratio is taken per round (`alternating_ratio`): the
overhead of the encoding, free of whatever else the machine does between two separate measurements.
Beside it, both models' forward FLOPs: counted by FlopCounterMode on the meta device, which must equal
the analytic formula (the camera transforms included). An encoding a variant does not implement is
listed as not run, with what it offers.
"""
from __future__ import annotations

from typing import Any, Literal, Mapping

import pandas as pd
from pydantic import Field

from models import label, model_card, model_class
from models.config import CAMERA_ENCODINGS

from ..pipeline import Report, Table, failure_notes
from ..plots import legend_outside, plt
from ..schema import Kind, Measurement, ModelName, Positive, RunOptions
from .kinds import CostSpec, SharedCores, cost_context, released_variants, sweep_and_report
from .measure import FlopCounter, ModelCache, RunContext, Sizes, alternating_ratio, synthetic_views
from .report import noisy_note

BASELINE = "plucker"


class CameraCostSpec(CostSpec, SharedCores):
    kind: Literal["profile_camera_encoding"]
    measure: Measurement = Measurement()
    models: list[ModelName] = Field(default_factory=released_variants, min_length=1)
    # Each timed against Plücker raymaps, for every variant implementing it.
    encodings: list[Literal[CAMERA_ENCODINGS[1:]]] = Field(default=list(CAMERA_ENCODINGS[1:]), min_length=1)  # type: ignore[valid-type]
    n_inputs: list[Positive] = Field(default=[2, 4, 8, 16, 32], min_length=1)
    n_target: Positive = 1


def encoded(sizes: Sizes, encoding: str) -> Sizes:
    return Sizes(sizes.preset, {**sizes.overrides, "camera_encoding": encoding})


def camera_measure(ctx: RunContext, settings: Measurement):
    """Times a point's encoding against raymaps in alternation and counts both models' FLOPs."""
    models: dict[str, ModelCache] = {}
    counters: dict[str, FlopCounter] = {}

    def measure(point: Mapping[str, Any]) -> dict[str, Any]:
        name, n, m, b = point["model"], point["n_input"], point["n_target"], point["batch"]
        for encoding in (point["camera_encoding"], BASELINE):
            models.setdefault(encoding, ModelCache(encoded(ctx.sizes, encoding), ctx.device))
            counters.setdefault(encoding, FlopCounter(encoded(ctx.sizes, encoding)))
        views = synthetic_views(b, n, m, ctx.image_size, ctx.device)
        with_encoding, with_rays = (models[e].get(name) for e in (point["camera_encoding"], BASELINE))
        timing = alternating_ratio(lambda: with_encoding(*views), lambda: with_rays(*views), ctx.device, ctx.dtype, settings)
        flops, rays = (counters[e].forward(name, n, m, b) for e in (point["camera_encoding"], BASELINE))
        return {**timing, "encoding_ms": timing["first_ms"], "plucker_ms": timing["second_ms"],
                "gflops": flops.counted / 1e9, "gflops_analytic": flops.analytic.flops / 1e9,
                "flops_relative_difference": flops.relative_difference, "plucker_gflops": rays.counted / 1e9,
                "flops_ratio": flops.counted / rays.counted, "params": with_encoding.num_parameters(),
                "plucker_params": with_rays.num_parameters()}

    return measure


def run_camera_cost(spec: CameraCostSpec, options: RunOptions) -> list[dict[str, Any]]:
    ctx = cost_context(spec)
    offered = {name: model_class(name).camera_encodings for name in spec.models}
    points = [ctx.point(model=name, camera_encoding=encoding, n_input=n, n_target=spec.n_target, batch=spec.batch,
                        measure=spec.measure.key())
              for name in spec.models for encoding in spec.encodings if encoding in offered[name] for n in sorted(spec.n_inputs)]
    not_run = [f"{label(name)}: {', '.join(absent)} not implemented (it offers {', '.join(offered[name])})"
               for name in spec.models if (absent := [e for e in spec.encodings if e not in offered[name]])]
    return sweep_and_report(spec, ctx, points, camera_measure(ctx, spec.measure),
                             lambda p: f"{p['model']} {p['camera_encoding']} N={p['n_input']}", options,
                             lambda rows, expected: camera_cost_report(spec, ctx, rows, not_run))


def camera_cost_report(spec: CameraCostSpec, ctx: RunContext, rows: list[dict[str, Any]], not_run: list[str]) -> Report:
    ok = [r for r in rows if r["status"] == "ok"]
    notes = [*ctx.notes(ok),
             f"latency_ratio: the model with the encoding over the same model with Plücker raymaps, timed in alternation, "
             f"median of the per-round ratios ({spec.measure.runs} rounds at most), M={spec.n_target}, batch {spec.batch}",
             "GFLOPs: FlopCounterMode on the meta device (2 x MAC, attention included); "
             "flops_relative_difference: counted against the analytic formula (the camera transforms included)",
             *failure_notes(rows, ["model", "camera_encoding", "n_input"])]
    result = Report(f"{spec.name}: cost of the camera encodings against Plücker raymaps", notes)
    result.not_run = not_run
    if not ok:
        return result
    frame = pd.DataFrame(ok)
    frame["variant"] = frame["model"].map(label)
    result.notes += noisy_note(frame, spec.measure.noisy_iqr, "latency ratio")
    columns = ["variant", "camera_encoding", "n_input", "latency_ratio", "latency_ratio_iqr", "rounds", "encoding_ms",
               "plucker_ms", "gflops", "plucker_gflops", "flops_ratio", "flops_relative_difference", "params", "plucker_params", "noisy"]
    result.tables.append(Table("cost", f"{spec.name}: every point", frame[columns].rename(columns={"n_input": "N"}), notes,
                               console=False, columns={"N": {"role": "setting"}, "latency_ratio": {"role": "ratio"},
                                                        "flops_ratio": {"role": "ratio"}},
                               status=["noisy" if noisy else "ok" for noisy in frame["noisy"]]))
    overhead = frame.pivot_table(index=["variant", "camera_encoding"], columns="n_input", values="latency_ratio", sort=False)
    overhead.columns = [f"N={n}" for n in overhead.columns]
    overhead = overhead.reset_index()
    result.tables.append(Table("overhead", f"Latency with the encoding / with Plücker raymaps, against N (M={spec.n_target})",
                               overhead, notes, floatfmt=".3f",
                               columns={"variant": {"role": "label"}, "camera_encoding": {"role": "label"},
                                        **{c: {"role": "ratio"} for c in overhead.columns if c.startswith("N=")}}))
    result.figures["overhead_vs_n.png"] = lambda: overhead_figure(frame, ctx)
    for (variant, encoding), part in frame.groupby(["variant", "camera_encoding"], sort=False):
        part = part.sort_values("n_input")
        low, high = part.iloc[0], part.iloc[-1]
        result.headlines.append(f"{variant}, {encoding}: latency x{low['latency_ratio']:.2f} of raymaps at N={low['n_input']}, "
                                f"x{high['latency_ratio']:.2f} at N={high['n_input']}; "
                                f"FLOPs x{high['flops_ratio']:.3f} at N={high['n_input']}")
    return result


def overhead_figure(frame: pd.DataFrame, ctx: RunContext):
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    styles = {"prope": "-", "gta": "--", "plucker+prope": ":"}
    for (name, encoding), part in frame.groupby(["model", "camera_encoding"], sort=False):
        part = part.sort_values("n_input")
        ax.errorbar(part["n_input"], part["latency_ratio"], yerr=part["latency_ratio_iqr"] / 2, marker="o", capsize=2,
                    linestyle=styles.get(encoding, "-"), color=model_card(name).color, label=f"{label(name)}, {encoding}")
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(frame["n_input"].unique()), [str(n) for n in sorted(frame["n_input"].unique())])
    ax.set_xlabel("N input views (M = 1)")
    ax.set_ylabel("latency / latency with Plücker raymaps")
    ax.set_title(f"Cost of cameras inside attention\n{ctx.env['device']}, {ctx.dtype}; preset {ctx.preset}, "
                 f"{ctx.image_size} px (bars: IQR)", fontsize=8)
    ax.grid(alpha=0.3)
    legend_outside(ax)
    return fig


CAMERA_COST = Kind(CameraCostSpec, run_camera_cost, "latency and FLOPs of PRoPE / GTA against Plücker raymaps, per variant, over N")
