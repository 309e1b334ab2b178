"""Kind `op_profile`: where one forward's CPU time goes, and how many bytes it copies
(experiments/op_profile.yaml).

For each variant and (N, M) point, one warm forward is profiled with torch.profiler (after an
untimed one: first calls allocate and pick kernels). Each point is one row of `rows.jsonl`; two
tables are rebuilt from the rows:

- `op_profile`: the top operations by self CPU time, with their call counts;
- `op_profile_summary`: per variant and point, the bytes written by copy kernels in one forward.
  `.contiguous()`, `.clone()`, `.reshape()` of a strided view and dtype casts all end in
  `aten::copy_`, so the sum of its destinations' sizes counts every copy of that kind once;
  concatenations (`aten::cat`) build new tensors rather than relayout old ones and are not counted.
  A layout regression (say, a head split that copies again) shows up there as a number, beside the
  official code's bytes at the same point when the experiment gives them.

Self CPU times come from one forward on a possibly shared CPU; the byte counts do not depend on load.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Literal

import pandas as pd
import torch
from pydantic import Field, model_validator
from torch.profiler import ProfilerActivity, profile

from models import build_model, label

from ..pipeline import Plan, Report, Table, by_config, failure_notes, ok_frame, run_plan
from ..report import preset_setting
from ..provenance import environment, measured_by
from ..schema import ExperimentBase, Kind, ModelName, ModelRef, Positive, PositiveFloat, PresetName, Published, RunOptions, Spec
from .kinds import SharedCores, released_variants
from .measure import MIB, mark_shared_cores, refuse_shared_cores, synthetic_views


# Element sizes under the names torch.profiler gives dtypes in `input_dtypes`.
DTYPE_BYTES = {
    "float": 4, "double": 8, "c10::Half": 2, "c10::BFloat16": 2, "long int": 8, "int": 4, "short int": 2,
    "signed char": 1, "unsigned char": 1, "bool": 1, "c10::complex<float>": 8, "c10::complex<double>": 16,
}


class CopiedReference(Spec):
    """Bytes another implementation (the official code) copies in one forward at a point."""
    model: ModelName
    n_input: Positive
    n_target: Positive
    mib: PositiveFloat


class OpProfileSpec(ExperimentBase, SharedCores):
    kind: Literal["op_profile"]
    models: list[ModelName] = Field(default_factory=released_variants, min_length=1)
    preset: PresetName = "small"
    overrides: dict[str, Any] = {}  # config fields every variant reads, on top of the preset (e.g. image_size)
    n_inputs: list[Positive] = Field(default=[2], min_length=1)
    n_targets: list[Positive] = Field(default=[1, 8], min_length=1)
    threads: Positive = 2
    top: Positive = 12  # operations listed per variant and point
    reference: Published[CopiedReference] | None = None
    allowed_ratio: PositiveFloat = 1.5  # our bytes may be at most this multiple of the reference's

    def preset_device(self) -> str:
        return "cpu"  # torch.profiler's CPU activity: the forward runs on the CPU

    @model_validator(mode="after")
    def _overrides_fit(self) -> "OpProfileSpec":
        for name in self.models:
            self.model_ref(name)
        return self

    def model_ref(self, name: str) -> ModelRef:
        return ModelRef(name=name, preset=self.preset, overrides=self.overrides)


# --------------------------------------------------------------------------------- measurement


def bytes_copied(events: Iterable) -> tuple[int, int]:
    """(bytes, calls) of the `aten::copy_` events among profiler `events` recorded with
    `record_shapes=True`; a copy's bytes are the size of its destination, its first input."""
    total = calls = 0
    for event in events:
        if event.name != "aten::copy_":
            continue
        shape, dtype = event.input_shapes[0], event.input_dtypes[0]
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"op_profile: no element size known for profiler dtype {dtype!r}")
        total += math.prod(shape) * DTYPE_BYTES[dtype]
        calls += 1
    return total, calls


def profiled(call: Callable[[], object]) -> profile:
    """Profile one call of `call` after an untimed one (first calls allocate and pick kernels)."""
    call()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        call()
    return prof


def top_ops(prof: profile, k: int) -> list[dict[str, Any]]:
    averages = sorted(prof.key_averages(), key=lambda a: a.self_cpu_time_total, reverse=True)
    total_us = sum(a.self_cpu_time_total for a in averages) or 1.0
    return [{"op": a.key, "self CPU ms": a.self_cpu_time_total / 1e3, "share %": 100 * a.self_cpu_time_total / total_us,
             "calls": a.count} for a in averages[:k]]


def measure_point(spec: OpProfileSpec, point: dict[str, Any]) -> dict[str, Any]:
    ref = spec.model_ref(point["model"])
    torch.manual_seed(0)
    model = build_model(ref.name, ref.preset, **ref.overrides).eval()
    n, m = point["n_input"], point["n_target"]
    views = synthetic_views(1, n, m, model.config.image_size, torch.device("cpu"))

    def forward():
        with torch.no_grad():
            return model(*views)

    prof = profiled(forward)
    copied, copies = bytes_copied(prof.events())
    return {"gflops": model.analytic_flops(n, m).flops / 1e9,
            "self_cpu_ms": sum(a.self_cpu_time_total for a in prof.key_averages()) / 1e3,
            "copies": copies, "mib_copied": copied / MIB, "top_ops": top_ops(prof, spec.top)}


# -------------------------------------------------------------------------------------- report


def op_profile_report(spec: OpProfileSpec, rows: list[dict[str, Any]]) -> Report:
    ok = ok_frame(rows)
    reference = {(r.model, r.n_input, r.n_target): r.mib for r in (spec.reference.rows if spec.reference else [])}
    summary, ops = [], []
    for row in ok.to_dict("records"):
        official = reference.get((row["model"], row["n_input"], row["n_target"]))
        summary.append({"variant": label(row["model"]), "N": row["n_input"], "M": row["n_target"], "GFLOPs": row["gflops"],
                        "self CPU ms (all ops)": row["self_cpu_ms"], "copy_ calls": row["copies"],
                        "MiB copied": row["mib_copied"], "reference MiB": official,
                        f"within {spec.allowed_ratio:g}x reference": None if official is None
                        else ("yes" if row["mib_copied"] <= spec.allowed_ratio * official else "no")})
        ops += [{"variant": label(row["model"]), "N": row["n_input"], "M": row["n_target"], "rank": i + 1, **op}
                for i, op in enumerate(row["top_ops"])]
    env = rows[-1] if rows else {}
    size = ", ".join(f"{k}={v}" for k, v in spec.overrides.items())
    notes = [f"measured: {env.get('device', 'not run yet')}; torch {env.get('torch')}, {spec.threads} threads, float32, eval, "
             f"no_grad; commit {', '.join(sorted({str(r['commit']) for r in rows if r.get('commit')})) or 'n/a'}",
             f"models: preset {spec.preset}" + (f" with {size}" if size else "") + "; batch 1; synthetic random views; "
             "one warm forward under torch.profiler (record_shapes)",
             *failure_notes(rows, ["model", "n_input", "n_target"])]
    summary_notes = notes + ([f"reference MiB: {spec.reference.source}; at most {spec.allowed_ratio:g}x is expected"]
                             if spec.reference else [])
    report = Report(f"{spec.name}: CPU time by operation and bytes copied per forward", notes)
    report.setting = preset_setting(rows, spec.preset, spec.overrides, spec.models)
    report.tables.append(Table("op_profile_summary", "Bytes copied per forward (aten::copy_ destinations)",
                               pd.DataFrame(summary), summary_notes))
    report.tables.append(Table("op_profile", f"Top {spec.top} operations by self CPU time, one forward", pd.DataFrame(ops),
                               notes, console=False))
    for row in summary:
        if row["reference MiB"] is not None:
            report.headlines.append(f"{row['variant']} (N={row['N']}, M={row['M']}): {row['MiB copied']:.2f} MiB copied per "
                                    f"forward, reference {row['reference MiB']:g} MiB ({spec.reference.source})")
    return report


def run_op_profile(spec: OpProfileSpec, options: RunOptions) -> list[dict[str, Any]]:
    refuse_shared_cores(spec.name, torch.device("cpu"), spec.allow_cpu_multirank)
    threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    try:
        env = environment("cpu")
        points = [{"model": name, "preset": spec.preset, "overrides": spec.overrides, "n_input": n, "n_target": m,
                   "threads": spec.threads, "top": spec.top}
                  for name in spec.models for n in spec.n_inputs for m in spec.n_targets]

        def report(rows: list[dict[str, Any]], expected: int) -> Report:
            result = op_profile_report(spec, rows)
            mark_shared_cores(result, rows)
            return result
        return run_plan(spec, Plan(points, lambda point: measure_point(spec, point),
                                   lambda p: f"{p['model']} N={p['n_input']} M={p['n_target']}", report,
                                   code=lambda p: measured_by(__name__, p["model"]), context=env,
                                   manifest={"device": env["device"], "preset": spec.preset}, identity=by_config), options)
    finally:
        torch.set_num_threads(threads)


OP_PROFILE = Kind(OpProfileSpec, run_op_profile, "torch.profiler: top operations and bytes copied per forward, per variant")
