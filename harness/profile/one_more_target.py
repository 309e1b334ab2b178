"""Kind `profile_one_more_target`: what rendering one more target view of a scene costs once its
state is built, against the number of input views N (experiments/render_one_more_target.yaml).

Every variant answers the encode-once API (`encode_scene`, then `render_scene`); its `scene_state`
says what the state holds. One more target view then costs, for example:
- LVSM encoder-decoder (latent tokens): the decoder over [target ; latents], the same at every N;
- Efficient-LVSM (per-layer keys and values): the target stream cross-attending to N*P cached keys,
  linear in N;
- LVSM decoder-only (no scene state): the whole forward pass over the N input views and the target.

Two parts per variant and N, each a row: FLOPs counted by FlopCounterMode on the meta device at
`flops.preset` (the paper preset costs nothing there), with the cost of building the state and its
size; and latency at `preset` (auto: small on a CPU, paper on CUDA), the state built once before the
timed runs of `render_scene` for one target view.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping

import pandas as pd
import torch
from pydantic import Field, field_validator

from models import label, list_models, model_card, model_class

from ..plots import fixed, plt
from ..pipeline import Plan, Report, Table, failure_notes, ok_frame, run_plan
from ..provenance import measured_by
from ..runtime import autocast
from ..schema import Kind, Measurement, ModelName, Positive, PresetName, RunOptions, Spec
from ..tables import missing_as_none
from .kinds import CostSpec, SharedCores
from .measure import MIB, FlopCounter, ModelCache, RunContext, measure_call, refuse_shared_cores, resolve_context, synthetic_views
from .report import Fit, exponents, fit_text, growth_exponent, noisy_note

NO_STATE = "none: recomputes the whole forward pass over the N input views"


class CountedAt(Spec):
    """Where FLOPs are counted: on the meta device (shapes only), so any preset costs nothing.
    `--preset` sets this preset too, like every preset of an experiment."""
    preset: PresetName = "paper"


class OneMoreTargetSpec(CostSpec, SharedCores):
    kind: Literal["profile_one_more_target"]
    # Every registered variant by default: each answers the encode-once API, with a state or without.
    models: list[ModelName] = Field(default_factory=list_models, min_length=1)
    n_inputs: list[Positive] = Field(default=[1, 2, 4, 8, 16, 32, 64], min_length=1)
    flops: CountedAt = CountedAt()
    measure: Measurement = Measurement()
    timed_n_inputs: list[Positive] | None = None  # the N whose latency is timed (None: every N of n_inputs)
    headline_n: list[Positive] = Field(default=[2, 8, 32], min_length=1)

    @field_validator("measure")
    @classmethod
    def _eager_only(cls, measure: Measurement) -> Measurement:
        # render_scene is timed as it is called (a compiled forward would not run through it).
        return measure.eager_only("profile_one_more_target", "render_scene runs eagerly")


def tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in a scene state (a tensor, or dataclasses, lists, tuples and dicts of them)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(tensor_bytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    return 0


def _state_columns(name: str, state: Any) -> dict[str, Any]:
    """What the state holds (None: no scene state) and its size; a stateless variant's "state" is
    its input views, which are not counted as one."""
    described = model_class(name).scene_state
    size = tensor_bytes(state) if described else 0
    return {"scene_state": described, "state_mib": size / MIB if size else None}


# ------------------------------------------------------------------------------------ running


def run_one_more_target(spec: OneMoreTargetSpec, options: RunOptions) -> list[dict[str, Any]]:
    counted = resolve_context(spec.flops.preset, spec.batch, spec.image_size, None)
    timed = resolve_context(spec.preset, spec.batch, spec.image_size, spec.measure)
    refuse_shared_cores(spec.name, timed.device, spec.allow_cpu_multirank)
    b = spec.batch
    points = [counted.point(part="flops", model=name, n_input=n, batch=b)
              for n in sorted(spec.n_inputs) for name in spec.models]
    points += [timed.point(part="latency", model=name, n_input=n, batch=b, measure=spec.measure.key())
               for n in sorted(spec.timed_n_inputs or spec.n_inputs) for name in spec.models]
    counter_at = {"flops": FlopCounter(counted.sizes), "latency": FlopCounter(timed.sizes)}
    models = ModelCache(timed.sizes, timed.device)

    def measure(point: Mapping[str, Any]) -> dict[str, Any]:
        name, n = point["model"], point["n_input"]
        counter = counter_at[point["part"]]
        encode, render, state = counter.scene(name, n, 1, b)
        columns = {"params": counter.model(name).num_parameters(), "gflops": render / 1e9, "encode_gflops": encode / 1e9,
                   **_state_columns(name, state)}
        if point["part"] == "flops":
            return columns
        model = models.get(name)
        images, c2w, fxfycxcy, target_c2w, target_fxfycxcy = synthetic_views(b, n, 1, timed.image_size, timed.device)
        with torch.no_grad(), autocast(timed.device, timed.dtype):
            state = model.encode_scene(images, c2w, fxfycxcy)
        timing = measure_call(lambda: model.render_scene(state, target_c2w, target_fxfycxcy), timed.device, timed.dtype,
                              spec.measure)
        return {**columns, **_state_columns(name, state), **timing}  # the state as built here (bf16 under autocast)

    return run_plan(spec, Plan(
        points, measure, lambda p: f"{p['model']} {p['part']} N={p['n_input']}",
        lambda rows, expected: one_more_target_report(spec, counted, timed, rows, expected),
        code=lambda p: measured_by(__name__, p["model"]), context=timed.env, deadline_s=spec.measure.deadline_s,
        manifest={"device": timed.env["device"], "preset": timed.preset, "flops_preset": counted.preset, "dtype": timed.dtype}),
        options)


# ------------------------------------------------------------------------------------- report


def _state_text(described: Any) -> str:
    """What a row's scene state holds, in words (a stateless variant's is recorded as None)."""
    return described if isinstance(described, str) and described else NO_STATE


def _shown(name: str, described: Any) -> str:
    """A variant's label, saying so when it has no scene state."""
    return label(name) if isinstance(described, str) and described else f"{label(name)} (no state: recomputes)"


def _per_n(frame: pd.DataFrame, column: str, ns: list[int], fmt: str) -> str:
    values = frame.set_index("n_input")[column]
    return " / ".join(fmt.format(values[n]) if n in values.index and pd.notna(values[n]) else "n/a" for n in ns)


def cost_figure(frame: pd.DataFrame, metrics: dict[str, str], states: Mapping[str, str | None], fit: Fit, where: str):
    """Log-log cost against N, one panel per metric, one line per variant in its card's colour
    (dashed: no scene state, the whole forward pass recomputed); one legend under both panels, with
    each variant's growth exponents."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.2), squeeze=False, layout="constrained")
    for ax, (column, title) in zip(axes[0], metrics.items()):
        for name, group in frame.groupby("model", sort=False):
            group = group.sort_values("n_input")
            y = pd.to_numeric(group[column], errors="coerce")
            ax.plot(group["n_input"], y, marker="o", markersize=4, color=model_card(name).color if name in list_models() else None,
                    linestyle="-" if states.get(name) else "--", label=_legend(name, frame, metrics, states, fit))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("N input views")
        ax.set_ylabel(title)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=7)
    fig.suptitle(f"One more target view given a scene state ({where})\n"
                 f"dashed: no scene state, the forward pass recomputed; growth exponents fitted over {fit_text(fit)}", fontsize=10)
    return fig


def _legend(name: str, frame: pd.DataFrame, metrics: dict[str, str], states: Mapping[str, str | None], fit: Fit) -> str:
    group = frame[frame["model"] == name]
    slopes = []
    for column in metrics:
        slope = growth_exponent(group["n_input"], pd.to_numeric(group[column], errors="coerce"), fit)
        if slope is not None:
            slopes.append(f"{'FLOPs' if column == 'gflops' else 'latency'} N^{fixed(slope)}")
    return _shown(name, states.get(name)) + (f" ({', '.join(slopes)})" if slopes else "")


def one_more_target_report(spec: OneMoreTargetSpec, counted: RunContext, timed: RunContext, rows: list[dict[str, Any]],
                           expected: int) -> Report:
    count_rows = [r for r in rows if r.get("part") == "flops"]
    timed_rows = [r for r in rows if r.get("part") == "latency"]
    # One list, shared by the report and its tables: notes added below (and the run's summary line the
    # caller puts first) head every table that was given it.
    notes = _report_notes(counted, timed, rows, count_rows, expected)
    result = Report(f"{spec.name}: the cost of one more target view given a scene state", notes)
    flops, latency = ok_frame(count_rows), ok_frame(timed_rows)
    if flops.empty and latency.empty:
        return result
    flops, latency = (_in_model_order(frame, spec.models) if not frame.empty else frame for frame in (flops, latency))
    states = _scene_states(flops, latency)
    shown = {name: _shown(name, described) for name, described in states.items()}
    notes += _stateless_notes(states)
    if not flops.empty:
        result.tables += _flops_tables(spec, counted, flops, shown, notes)
    if not latency.empty:
        notes += noisy_note(latency, spec.measure.noisy_iqr)
        result.tables.append(_latency_table(spec, timed, latency, notes))
    both = _in_model_order(pd.concat([flops[["model", "n_input", "gflops"]] if not flops.empty else pd.DataFrame(),
                                      latency[["model", "n_input", "latency_ms"]] if not latency.empty else pd.DataFrame()])
                           .groupby(["model", "n_input"], sort=False, as_index=False).first(), spec.models)
    metrics = {"gflops": f"GFLOPs (counted, preset {counted.preset})",
               "latency_ms": f"latency ms (timed, preset {timed.preset})"}
    metrics = {k: v for k, v in metrics.items() if k in both}
    result.tables.append(_exponents_table(spec, both, metrics, shown, notes))
    where = f"FLOPs counted on the meta device; latency on {timed.env['device']}, {timed.dtype}"
    result.figures["one_more_target.png"] = lambda: cost_figure(both, metrics, states, spec.fit, where)
    result.headlines += _headlines(spec, counted, timed, flops, latency, states, shown)
    return result


def _report_notes(counted: RunContext, timed: RunContext, rows: list[dict[str, Any]], count_rows: list[dict[str, Any]],
                  expected: int) -> list[str]:
    counted_notes, timed_notes = counted.notes(count_rows), timed.notes(rows)
    notes = [
        "one more target: `render_scene(state, one target camera)`, the state built once beforehand by `encode_scene` "
        "from the N input views (`encode GFLOPs`: the cost of building it)",
        f"FLOPs {counted_notes[0]}; at {counted_notes[1]}",
        f"latency {timed_notes[0]}; median and IQR of the timed runs after warm-up; at {timed_notes[1]}",
        *timed_notes[2:],
    ] + failure_notes(rows, ["model", "part", "n_input"])
    if len(rows) < expected:
        notes.append(f"{expected - len(rows)} of {expected} points not measured yet (rerun to resume)")
    return notes


def _in_model_order(frame: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    """The experiment's model order (the registry's by default), then N."""
    order = {name: index for index, name in enumerate(models)}
    return frame.sort_values(["model", "n_input"], key=lambda c: c.map(order) if c.name == "model" else c)


def _scene_states(*frames: pd.DataFrame) -> dict[str, str | None]:
    """Each variant's scene state as its rows describe it, None for a variant that keeps none."""
    states: dict[str, str | None] = {}
    for frame in frames:
        if not frame.empty:
            states.update((m, s if isinstance(s, str) and s else None) for m, s in zip(frame["model"], frame["scene_state"]))
    return states


def _stateless_notes(states: Mapping[str, str | None]) -> list[str]:
    stateless = [label(name) for name, described in states.items() if not described]
    if not stateless:
        return []
    return [f"no scene state ({', '.join(stateless)}): nothing of the input views can be kept, so one more "
            "target recomputes the whole forward pass over the N input views and that target"]


def _flops_tables(spec: OneMoreTargetSpec, counted: RunContext, flops: pd.DataFrame, shown: Mapping[str, str],
                  notes: list[str]) -> list[Table]:
    """The counted FLOPs per variant and N, and the same GFLOPs with one column per variant."""
    table = pd.DataFrame({
        "model": flops["model"].map(label), "scene state": flops["scene_state"].map(_state_text),
        "N": flops["n_input"], "one more target GFLOPs": flops["gflops"],
        "encode GFLOPs (once)": flops["encode_gflops"],
        "one more target / (encode + one target)": flops["gflops"] / (flops["gflops"] + flops["encode_gflops"]),
        "state MiB (float32)": flops["state_mib"],
    })
    title = f"One more target view given a scene state: FLOPs (counted, preset {counted.preset})"
    wide = flops.assign(series=flops["model"].map(shown)).pivot_table(
        index="n_input", columns="series", values="gflops", sort=False).reset_index()
    wide["n_input"] = wide["n_input"].astype(int).astype(object)
    return [Table(spec.name, title, missing_as_none(table), notes, console=False),
            Table("gflops_wide", f"GFLOPs of one more target view (counted, preset {counted.preset})",
                  wide.rename(columns={"n_input": "N"}), notes[:2], floatfmt=",.2f",
                  columns={str(c): {"quantity": "flops"} for c in wide.columns if c != "n_input"})]


def _latency_table(spec: OneMoreTargetSpec, timed: RunContext, latency: pd.DataFrame, notes: list[str]) -> Table:
    table = pd.DataFrame({
        "model": latency["model"].map(label), "scene state": latency["scene_state"].map(_state_text),
        "N": latency["n_input"], "latency ms (median)": latency["latency_ms"], "IQR ms": latency["latency_iqr_ms"],
        "runs": latency["runs"], "noisy": latency["noisy"].map(lambda v: "noisy" if v is True else ""),
        "GFLOPs": latency["gflops"], "state MiB": latency["state_mib"], "peak mem MiB": latency["peak_mem_mb"],
    })
    title = f"One more target view given a scene state: latency ({timed.env['device']}, {timed.dtype}, preset {timed.preset})"
    return Table("latency", title, missing_as_none(table), notes)


def _exponents_table(spec: OneMoreTargetSpec, both: pd.DataFrame, metrics: Mapping[str, str], shown: Mapping[str, str],
                     notes: list[str]) -> Table:
    slopes = exponents(both, "n_input", {k: f"{'FLOPs' if k == 'gflops' else 'latency'} exponent" for k in metrics},
                       ["model"], spec.fit)
    slopes["model"] = slopes["model"].map(shown)
    return Table("exponents", f"Growth exponents in N of one more target view (log-log fit over {fit_text(spec.fit)})",
                 slopes, notes[1:3], floatfmt=".2f")


def _headlines(spec: OneMoreTargetSpec, counted: RunContext, timed: RunContext, flops: pd.DataFrame, latency: pd.DataFrame,
               states: Mapping[str, str | None], shown: Mapping[str, str]) -> list[str]:
    """One line per variant: its cost at the headline Ns, counted and timed."""
    ns = list(spec.headline_n)
    lines = []
    for name in shown:
        parts = []
        mine = flops[flops["model"] == name] if not flops.empty else flops
        if not mine.empty:
            parts.append(f"{_per_n(mine, 'gflops', ns, '{:,.2f}')} GFLOPs (preset {counted.preset})")
        mine = latency[latency["model"] == name] if not latency.empty else latency
        if not mine.empty:
            parts.append(f"{_per_n(mine, 'latency_ms', ns, '{:.2f}')} ms (preset {timed.preset}, {timed.env['device']})")
        lines.append(f"{label(name)}, one more target at N = {', '.join(map(str, ns))}: " + "; ".join(parts)
                     + f" (state: {_state_text(states[name])})")
    return lines


ONE_MORE_TARGET = Kind(OneMoreTargetSpec, run_one_more_target,
                       "the cost of one more target view given a scene state (encode once, render many), against N")
