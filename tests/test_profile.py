"""Profiling harness: FLOP counts vs the analytic formulas, resumable sweeps that record failures,
the measurement helpers and the experiment files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import VARIANTS
from harness.experiment import ExperimentError, load_experiment
from harness.profile.fit import growth_exponent
from harness.profile.flops import FlopCounter
from harness.profile.inputs import synthetic_views
from harness.profile.measure import MeasureSettings, measure_call
from harness.profile.memory import PeakMemory
from harness.profile.sweep import Sweep
from harness.profile.timing import planned_runs
from harness.records import RecordStore
from models import PRESETS, build_model

ROOT = Path(__file__).resolve().parent.parent

# Two configurations where attention is a sizeable share of the FLOPs, so leaving it out would fail.
CONFIGS = [
    (PRESETS["tiny"], 3, 2, 1),
    (PRESETS["small"].with_overrides(image_size=48, depth=2, encoder_depth=1, decoder_depth=1, stream_depth=2), 5, 3, 2),
]


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("config,n,m,batch", CONFIGS)
def test_flop_counter_matches_analytic_formula_with_attention(name, config, n, m, batch):
    count = FlopCounter(config).forward(name, n, m, batch)
    assert count.analytic.attention_macs / count.analytic.macs > 0.05
    assert count.relative_difference < 0.01, (count.counted, count.analytic.flops)
    # Counting linear layers only (what thop reports) would be far off.
    assert abs(count.counted - 2 * count.analytic.linear_macs) / count.counted > 0.05


def test_meta_count_equals_math_backend_count_on_real_tensors():
    """The meta-device count is what a real forward pass costs (math SDPA is counted on CPU)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    config = PRESETS["tiny"]
    model = build_model("efficient_lvsm", config).eval()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(*synthetic_views(1, 3, 2, config.image_size, "cpu"))
    assert counter.get_total_flops() == FlopCounter(config).forward("efficient_lvsm", 3, 2).counted


def test_incremental_count_is_one_new_view_plus_rendering():
    counter = FlopCounter(PRESETS["tiny"])
    count = counter.incremental("efficient_lvsm", 6, 1, 4)
    assert count.relative_difference < 0.01
    # Adding a view to 6 cached ones costs far less than a full forward over 7 views.
    assert count.counted < 0.6 * counter.forward("efficient_lvsm", 7, 4).counted


def test_growth_exponent():
    ns = [1, 2, 4, 8, 16, 32]
    assert growth_exponent(ns, [3 * n ** 2 for n in ns]) == pytest.approx(2.0)
    affine = [4 + n for n in ns]  # tends to slope 1 at large n only
    assert growth_exponent(ns, affine, min_n=16) > growth_exponent(ns, affine) + 0.2
    assert growth_exponent(ns, affine, min_n=16) == pytest.approx(0.85, abs=0.05)
    assert growth_exponent([1, 2], [1.0, None]) is None


def test_planned_runs_respects_budget_and_minimum():
    assert planned_runs(10.0, 20, 5, None) == 20
    assert planned_runs(10.0, 20, 5, 1.0) == 20  # 100 runs would fit
    assert planned_runs(100.0, 20, 5, 1.0) == 10
    assert planned_runs(1000.0, 20, 5, 1.0) == 5


def _points(n):
    return [{"model": "m", "n_input": i} for i in range(n)]


def test_interrupted_sweep_resumes_without_repeating_points(tmp_path):
    store = RecordStore(tmp_path / "rows.jsonl")
    calls, interrupt = [], [True]

    def measure(point):
        if point["n_input"] == 3 and interrupt and interrupt.pop():
            raise KeyboardInterrupt  # the user stops the sweep half-way, once
        calls.append(point["n_input"])
        return {"value": point["n_input"] * 10}

    with pytest.raises(KeyboardInterrupt):
        Sweep(store, "exp", "v1").run(_points(6), measure, progress=False)
    assert calls == [0, 1, 2] and len(store.rows()) == 3
    summary = Sweep(store, "exp", "v1").run(_points(6), measure, progress=False)
    assert calls == [0, 1, 2, 3, 4, 5]
    assert (summary.measured, summary.skipped) == (3, 3)
    rows = Sweep(store, "exp", "v1").rows(_points(6))
    assert [r["value"] for r in rows] == [0, 10, 20, 30, 40, 50]
    assert len({r["key"] for r in store.rows()}) == len(store.rows()) == 6
    # Another code version measures again.
    Sweep(store, "exp", "v2").run(_points(6), measure, progress=False)
    assert len(calls) == 12


def test_oom_and_exception_are_recorded_and_the_sweep_goes_on(tmp_path):
    store = RecordStore(tmp_path / "rows.jsonl")
    calls = []

    def measure(point):
        calls.append(point["n_input"])
        if point["n_input"] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
        if point["n_input"] == 2:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1e12 bytes")
        if point["n_input"] == 3:
            raise ValueError("bad\nshape")
        return {"value": 1}

    summary = Sweep(store, "exp", "v1", {"device": "cpu"}).run(_points(5), measure, progress=False)
    statuses = [r["status"] for r in store.rows()]
    assert statuses == ["ok", "oom", "oom", "error", "ok"]
    assert len(summary.failed) == 3
    error = store.rows()[3]
    assert error["error"] == "ValueError: bad shape" and error["device"] == "cpu"
    # A rerun keeps the OOM points (they would only run out again) and retries the error.
    Sweep(store, "exp", "v1").run(_points(5), measure, progress=False)
    assert calls == [0, 1, 2, 3, 4, 3]


def test_measure_call_statistics_and_cpu_peak_memory():
    settings = MeasureSettings(warmup=1, runs=4)
    result = measure_call(lambda: torch.ones(16 * 2 ** 20).sum(), torch.device("cpu"), "float32", settings)  # 64 MiB
    assert result["runs"] == 4 and result["warmup"] == 1
    assert result["latency_q1_ms"] <= result["latency_ms"] <= result["latency_q3_ms"]
    if result["mem_kind"] == "unavailable":
        pytest.skip("/proc/self/clear_refs is not available here")
    assert result["peak_mem_mb"] - result["baseline_mem_mb"] > 48


def test_peak_memory_is_reset_between_blocks():
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc")
    with PeakMemory(torch.device("cpu")) as big:
        x = torch.ones(32 * 2 ** 20)  # 128 MiB
        del x
    with PeakMemory(torch.device("cpu")) as small:
        y = torch.ones(2 ** 20)
        del y
    assert big.columns["peak_mem_mb"] - big.columns["baseline_mem_mb"] > 100
    assert small.columns["peak_mem_mb"] - small.columns["baseline_mem_mb"] < 64


def _write(tmp_path, text):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_profile_experiment_end_to_end_and_resume(tmp_path, capsys):
    path = _write(tmp_path, f"""
kind: profile
models: [lvsm_decoder_only, efficient_lvsm]
preset: tiny
device: cpu
n_inputs: [1, 2, 4]
n_targets: [2]
warmup: 1
runs: 3
fit_min_n: 1
headline_n: 2
headline_m: 2
output_dir: {tmp_path / 'out'}
""")
    from harness.experiment import run_experiment
    rows = run_experiment(path, progress=False)
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    row = rows[0]
    for column in ("latency_ms", "latency_iqr_ms", "runs", "peak_mem_mb", "gflops", "gmacs_linear_thop",
                   "device", "dtype", "torch", "threads", "preset", "n_input", "n_target", "batch", "commit"):
        assert column in row, column
    out = tmp_path / "out"
    for name in ("exp.md", "exp.csv", "exp.tex", "ratios.md", "exponents.md", "cost_vs_views.png"):
        assert (out / name).is_file(), name
    printed = capsys.readouterr().out
    assert "Efficient-LVSM / LVSM decoder-only at N=2, M=2: latency ratio" in printed
    assert "measured: cpu" in (out / "exp.md").read_text()
    # Rows measured at another commit keep that commit in the rebuilt tables.
    lines = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    (out / "rows.jsonl").write_text("".join(json.dumps({**r, "commit": "abc1234"}) + "\n" for r in lines))
    run_experiment(path, progress=False)
    assert "0 measured, 6 already recorded" in capsys.readouterr().out
    assert len(RecordStore(out / "rows.jsonl").rows()) == 6
    assert "code: commit abc1234," in (out / "exp.md").read_text()


def test_kv_cache_and_efficiency_experiments_run(tmp_path, capsys):
    from harness.experiment import run_experiment
    kv = _write(tmp_path, f"""
kind: profile_kv_cache
preset: tiny
device: cpu
n_cached: [2, 4]
n_targets: 2
warmup: 1
runs: 2
fit_min_n: 1
output_dir: {tmp_path / 'kv'}
published:
  source: test
  rows: [{{n: 2, cached_ms: 1.0, recompute_ms: 3.0}}, {{n: 4, cached_ms: 2.0, recompute_ms: 9.0}}]
""")
    rows = run_experiment(kv, progress=False)
    assert [(r["mode"], r["n_cached"]) for r in rows] == [("kv_cache", 2), ("recompute", 2), ("kv_cache", 4), ("recompute", 4)]
    assert all(r["status"] == "ok" for r in rows)
    cached = [r for r in rows if r["mode"] == "kv_cache"]
    assert cached[1]["kv_cache_mb"] == pytest.approx(2 * cached[0]["kv_cache_mb"])
    assert "published speed-up" in (tmp_path / "kv" / "exp.md").read_text()
    eff = tmp_path / "eff.yaml"
    eff.write_text(f"""
kind: profile_efficiency
preset: tiny
device: cpu
warmup: 1
runs: 2
output_dir: {tmp_path / 'eff'}
published:
  source: test
  rows: [{{model: lvsm_decoder_only, label: LVSM, params_m: 177, latency_ms: 109.37, gflops_thop: 8523}},
         {{model: efficient_lvsm, label: E, params_m: 199, latency_ms: 24.78, gflops_thop: 1325}},
         {{model: pixelsplat, label: pixelSplat, params_m: 125, latency_ms: 50.52, gflops_thop: 1934}}]
""")
    run_experiment(eff, progress=False)
    text = (tmp_path / "eff" / "eff.md").read_text()
    assert "pixelSplat" in text and "published: latency 4.41x" in text


@pytest.mark.parametrize("name", ["flops", "speed_vs_views", "bench", "efficiency_table", "kv_cache"])
def test_experiment_files_load(name):
    spec = load_experiment(ROOT / "experiments" / f"{name}.yaml")
    assert spec.kind.startswith("profile") and spec.published is not None


@pytest.mark.parametrize("body, message", [
    ("kind: profile\nmodels: [lvsm_decoder_only, nope]\n", r"exp.yaml: models\[1\]: unknown value 'nope'"),
    ("kind: profile\nruns: 0\n", r"exp.yaml: runs: expected a positive number, got 0"),
    ("kind: profile_kv_cache\ncached_model: lvsm_decoder_only\n",
     r"exp.yaml: cached_model: 'lvsm_decoder_only' has no KV-cache renderer"),
    ("kind: profile\ndevice: gpu\n", r"exp.yaml: device: expected auto, cpu, cuda"),
])
def test_bad_values_name_the_file_and_key(tmp_path, body, message):
    with pytest.raises(ExperimentError, match=message):
        load_experiment(_write(tmp_path, body))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_gpu_check_fails_loudly_without_cuda(tmp_path):
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "OUT": str(tmp_path), "PY": sys.executable}, timeout=120)
    assert result.returncode != 0
    assert "no CUDA device" in result.stdout + result.stderr
    assert not list(tmp_path.glob("*/rows.jsonl"))


def test_deadline_leaves_points_for_the_next_run(tmp_path):
    import time
    store = RecordStore(tmp_path / "rows.jsonl")

    def measure(point):
        time.sleep(0.05)
        return {"value": 1}

    first = Sweep(store, "exp", "v1").run(_points(4), measure, progress=False, deadline_s=0.01)
    assert (first.measured, first.left) == (1, 3) and len(store.rows()) == 1
    assert "3 left for the next run" in first.line("exp")
    second = Sweep(store, "exp", "v1").run(_points(4), measure, progress=False)
    assert (second.measured, second.skipped, second.left) == (3, 1, 0)


@pytest.mark.parametrize("name", VARIANTS)
def test_bf16_autocast_measurement_runs(name):
    """The gpu-check measures under bf16 autocast; CPU autocast exercises the same dtype paths."""
    model = build_model(name, "tiny").eval()
    views = synthetic_views(1, 2, 2, 32, "cpu")
    result = measure_call(lambda: model(*views), torch.device("cpu"), "bfloat16", MeasureSettings(warmup=1, runs=2))
    assert result["runs"] == 2
    if name == "efficient_lvsm":
        renderer = model.incremental(views[3], views[4], 32, 32)
        result = measure_call(lambda: renderer.add_views(*views[:3]).render(), torch.device("cpu"), "bfloat16",
                              MeasureSettings(warmup=0, runs=1))
        assert result["runs"] == 1
