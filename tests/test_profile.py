"""Profiling: FLOP counts against the analytic formulas, timing and memory, the shared sweep, the four kinds."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ALL_VARIANTS, VARIANTS
from harness.errors import ConfigError
from harness.pipeline import Sweep
from harness.profile import measure as measure_module
from harness.profile.measure import FlopCounter, PeakMemory, Sizes, measure_call, planned_runs, synthetic_views
from harness.profile.report import growth_exponent
from harness.records import RecordStore
from harness.schema import Measurement, load_experiment, run_experiment
from models import build_model

ROOT = Path(__file__).resolve().parent.parent

# Two configurations where attention is a sizeable share of the FLOPs, so leaving it out would fail.
CONFIGS = [
    (Sizes("tiny"), 3, 2, 1),
    (Sizes("small", {"image_size": 48}), 5, 3, 2),
]


@pytest.mark.parametrize("name", ALL_VARIANTS)
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
    model = build_model("efficient_lvsm", "tiny").eval()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(*synthetic_views(1, 3, 2, model.config.image_size, "cpu"))
    assert counter.get_total_flops() == FlopCounter(Sizes("tiny")).forward("efficient_lvsm", 3, 2).counted


def test_incremental_count_is_one_new_view_plus_rendering():
    counter = FlopCounter(Sizes("tiny"))
    count = counter.incremental("efficient_lvsm", 6, 1, 4)
    assert count.relative_difference < 0.01
    # Adding a view to 6 cached ones costs far less than a full forward over 7 views.
    assert count.counted < 0.6 * counter.forward("efficient_lvsm", 7, 4).counted


def test_growth_exponent():
    ns = [1, 2, 4, 8, 16, 32]
    assert growth_exponent(ns, [3 * n ** 2 for n in ns]) == pytest.approx(2.0)
    affine = [4 + n for n in ns]  # tends to slope 1 at large n only
    assert growth_exponent(ns, affine, (16, None)) > growth_exponent(ns, affine) + 0.2
    assert growth_exponent(ns, affine, (16, None)) == pytest.approx(0.85, abs=0.05)
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
    sweep = lambda version: Sweep(tmp_path, "exp", version=version)

    def measure(point):
        if point["n_input"] == 3 and interrupt and interrupt.pop():
            raise KeyboardInterrupt  # the user stops the sweep half-way, once
        calls.append(point["n_input"])
        return {"value": point["n_input"] * 10}

    with pytest.raises(KeyboardInterrupt):
        sweep("v1").run(_points(6), measure, progress=False)
    assert calls == [0, 1, 2] and len(store.rows()) == 3
    summary = sweep("v1").run(_points(6), measure, progress=False)
    assert calls == [0, 1, 2, 3, 4, 5]
    assert (summary.measured, summary.skipped) == (3, 3)
    rows = sweep("v1").rows(_points(6))
    assert [r["value"] for r in rows] == [0, 10, 20, 30, 40, 50]
    assert len({r["key"] for r in store.rows()}) == len(store.rows()) == 6
    # Another code version measures again.
    sweep("v2").run(_points(6), measure, progress=False)
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

    summary = Sweep(tmp_path, "exp", {"device": "cpu"}, "v1").run(_points(5), measure, progress=False)
    statuses = [r["status"] for r in store.rows()]
    assert statuses == ["ok", "oom", "oom", "error", "ok"]
    assert len(summary.failed) == 3
    error = store.rows()[3]
    assert error["error"] == "ValueError: bad shape" and error["device"] == "cpu"
    # A rerun keeps the OOM points (they would only run out again) and retries the error.
    Sweep(tmp_path, "exp", version="v1").run(_points(5), measure, progress=False)
    assert calls == [0, 1, 2, 3, 4, 3]


def test_measure_call_statistics_and_noisy_flag(monkeypatch):
    """Median, quartiles and the noisy mark come from the timed samples (warm-up excluded)."""
    samples = iter([500.0, 10.0, 11.0, 12.0, 13.0, 30.0])  # one warm-up, then five timed runs
    monkeypatch.setattr(measure_module, "time_once_ms", lambda fn, device: next(samples))
    # Only the samples decide here: other work on this machine's cores must not mark the point noisy.
    monkeypatch.setattr(measure_module, "mark_contention", lambda columns, contention: {**columns, **contention})
    result = measure_call(lambda: None, torch.device("cpu"), "float32", Measurement(warmup=1, runs=5, noisy_iqr=0.5))
    assert (result["runs"], result["warmup"]) == (5, 1)
    assert (result["latency_ms"], result["latency_q1_ms"], result["latency_q3_ms"]) == (12.0, 11.0, 13.0)
    assert result["noisy"] is False and result["latency_spread"] == pytest.approx(2 / 12)
    samples = iter([5.0, 10.0, 20.0, 30.0, 40.0, 50.0])
    result = measure_call(lambda: None, torch.device("cpu"), "float32", Measurement(warmup=1, runs=5, noisy_iqr=0.5))
    assert result["latency_ms"] == 30.0 and result["noisy"] is True  # IQR 20 ms > 50% of 30 ms


def test_cpu_peak_memory_sees_a_known_allocation_and_is_reset_between_points():
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc")
    big = measure_call(lambda: torch.ones(32 * 2 ** 20).sum(), torch.device("cpu"), "float32", Measurement(warmup=1, runs=2))
    with PeakMemory(torch.device("cpu")) as small:
        y = torch.ones(2 ** 20)
        del y
    assert big["peak_mem_mb"] - big["baseline_mem_mb"] > 100  # 128 MiB allocated per call
    assert small.columns["peak_mem_mb"] - small.columns["baseline_mem_mb"] < 64


def _write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


MEASURE = "measure: {device: cpu, warmup: 1, runs: 3}"


@pytest.mark.slow
def test_profile_experiment_end_to_end_and_resume(tmp_path, capsys):
    path = _write(tmp_path, f"""
kind: profile
models: [lvsm_decoder_only, efficient_lvsm]
preset: tiny
n_inputs: [1, 2, 4]
n_targets: [2]
{MEASURE}
fit_n: [1, 64]
headline_n: 2
headline_m: 2
output_dir: {tmp_path / 'out'}
""")
    rows = run_experiment(path, progress=False)
    assert len(rows) == 7 and all(r["status"] == "ok" for r in rows)
    pair = rows[-1]  # the headline pair, timed in alternation
    assert pair["pair"] == ["efficient_lvsm", "lvsm_decoder_only"] and (pair["n_input"], pair["n_target"]) == (2, 2)
    assert pair["rounds"] == 3 and pair["latency_ratio"] > 0 and pair["latency_ratio_iqr"] >= 0
    row = rows[0]
    for column in ("latency_ms", "latency_iqr_ms", "runs", "noisy", "peak_mem_mb", "gflops", "gmacs_linear_thop",
                   "device", "dtype", "torch", "threads", "preset", "n_input", "n_target", "batch", "commit"):
        assert column in row, column
    out = tmp_path / "out"
    for name in ("exp.md", "exp.csv", "exp.tex", "ratios.md", "exponents.md", "cost_vs_views.png", "manifest.json"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["experiment"]["preset"] == "tiny" and manifest["packages"]["torch"] and "collect_env" in manifest
    printed = capsys.readouterr().out
    assert "Efficient-LVSM / LVSM decoder-only at N=2, M=2, timed in alternation (3 rounds): latency ratio" in printed
    assert "Efficient-LVSM / LVSM decoder-only at N=2, M=2, from the points (measured one after another): latency ratio" in printed
    assert "measured: cpu" in (out / "exp.md").read_text()
    # Rows measured at another commit keep that commit in the rebuilt tables.
    lines = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    (out / "rows.jsonl").write_text("".join(json.dumps({**r, "commit": "abc1234"}) + "\n" for r in lines))
    run_experiment(path, progress=False)
    assert "0 measured, 7 already recorded" in capsys.readouterr().out
    assert len(RecordStore(out / "rows.jsonl").rows()) == 7
    assert "code: commit abc1234," in (out / "exp.md").read_text()


@pytest.mark.slow
def test_kv_cache_and_efficiency_experiments_run(tmp_path):
    kv = _write(tmp_path, f"""
kind: profile_kv_cache
preset: tiny
n_cached: [2, 4]
n_targets: 2
rebuild_models: [lact]
{MEASURE}
fit_n: [1, 64]
output_dir: {tmp_path / 'kv'}
published:
  source: test
  rows: [{{n: 2, cached_ms: 1.0, recompute_ms: 3.0}}, {{n: 4, cached_ms: 2.0, recompute_ms: 9.0}}]
""")
    rows = run_experiment(kv, progress=False)
    assert [(r["mode"], r["n_cached"]) for r in rows] == [("kv_cache", 2), ("recompute", 2), ("rebuild", 2),
                                                          ("kv_cache", 4), ("recompute", 4), ("rebuild", 4)]
    assert all(r["status"] == "ok" for r in rows)
    cached = [r for r in rows if r["mode"] == "kv_cache"]
    assert cached[1]["kv_cache_mb"] == pytest.approx(2 * cached[0]["kv_cache_mb"])
    # LaCT's state is rebuilt (a forward over N+1 views); its incremental update renders otherwise.
    rebuilt = [r for r in rows if r["mode"] == "rebuild"]
    assert all(r["model"] == "lact" and 0 < r["incremental_max_abs"] < 1 and r["incremental_psnr_db"] > 20 for r in rebuilt)
    # Which kernel LaCT's bfloat16 step ran on is part of each of its rows and of the tables' notes.
    kernel = build_model("lact", "tiny").numerics("cpu")
    assert all(r["numerics"] == {"lact": kernel} for r in rebuilt) and not any("numerics" in r for r in rows if r["model"] != "lact")
    assert f"numerics: LaCT: newton_schulz {kernel['newton_schulz']}" in (tmp_path / "kv" / "exp.md").read_text()
    text = (tmp_path / "kv" / "exp.md").read_text()
    assert "published speed-up" in text and "LaCT incremental PSNR dB" in text and "rebuilt from all N+1 views" in text
    eff = _write(tmp_path, f"""
kind: profile_efficiency
preset: tiny
{MEASURE}
output_dir: {tmp_path / 'eff'}
published:
  source: test
  rows: [{{label: pixelSplat, params_m: 125, latency_ms: 50.52, gflops_thop: 1934}}]
""", "eff.yaml")
    run_experiment(eff, progress=False)
    text = (tmp_path / "eff" / "eff.md").read_text()
    # Registered variants' published numbers come from their cards, other methods from the YAML.
    assert "pixelSplat" in text and "109.4" in text and "published: latency 4.41x" in text
    assert "ours, timed in alternation (3 rounds): LVSM decoder-only / Efficient-LVSM latency" in text
    assert "ours, from the rows: LVSM decoder-only / Efficient-LVSM latency" in text


@pytest.mark.slow
def test_op_profile_counts_the_bytes_a_forward_copies_and_resumes_from_its_rows(tmp_path):
    path = _write(tmp_path, f"""
kind: op_profile
models: [lvsm_decoder_only, efficient_lvsm]
preset: tiny
overrides: {{image_size: 16}}
n_inputs: [1]
n_targets: [1, 2]
top: 3
output_dir: {tmp_path / 'ops'}
reference:
  source: test
  rows: [{{model: efficient_lvsm, n_input: 1, n_target: 2, mib: 1000.0}}]
""")
    rows = run_experiment(path, progress=False)
    assert [(r["model"], r["n_target"], r["status"]) for r in rows] == [
        ("lvsm_decoder_only", 1, "ok"), ("lvsm_decoder_only", 2, "ok"), ("efficient_lvsm", 1, "ok"), ("efficient_lvsm", 2, "ok")]
    assert all(r["mib_copied"] > 0 and r["copies"] > 0 and len(r["top_ops"]) == 3 for r in rows)
    summary = (tmp_path / "ops" / "op_profile_summary.md").read_text()
    assert "within 1.5x reference" in summary and "| yes" in summary and "reference MiB: test" in summary
    assert (tmp_path / "ops" / "op_profile.csv").is_file() and (tmp_path / "ops" / "manifest.json").is_file()
    assert run_experiment(path, progress=False) == rows  # a rerun measures nothing again


@pytest.mark.parametrize("body, message", [
    ("kind: op_profile\nmodels: [efficient_lvsm]\noverrides: {depth: 2}\n", r"exp.yaml: .*depth"),
    ("kind: profile\nmodels: [lvsm_decoder_only, nope]\n", r"exp.yaml: models.1: unknown model 'nope'"),
    ("kind: profile\nmeasure: {runs: 0}\n", r"exp.yaml: measure.runs: Input should be greater than 0 \(got 0\)"),
    ("kind: profile\nmeasure: {run: 3}\n", r"exp.yaml: measure.run: unknown key"),
    ("kind: profile_kv_cache\nratio: {model: lvsm_decoder_only, baseline: lvsm_decoder_only}\n",
     r"exp.yaml: ratio: .*'lvsm_decoder_only' has no KV-cache renderer"),
    ("kind: profile_kv_cache\nrebuild_models: [efficient_lvsm]\n",
     r"exp.yaml: rebuild_models: .*'efficient_lvsm' has no approximate incremental update"),
    ("kind: profile\nmeasure: {device: gpu}\n", r"exp.yaml: measure.device: String should match pattern"),
    ("kind: profile\nn_inputs: []\n", r"exp.yaml: n_inputs: List should have at least 1 item"),
    ("kind: profile\nbatch: '2'\n", r"exp.yaml: batch: Input should be a valid integer \(got '2'\)"),
    ("kind: profile_efficiency\npublished: {source: s, rows: [{label: x, params_m: 1, latency: 2, gflops_thop: 3}]}\n",
     r"exp.yaml: published.rows.0.latency_ms: Field required"),
    ("kind: trian\n", r"exp.yaml: kind: unknown experiment kind 'trian'"),
])
def test_bad_values_name_the_file_and_key(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message):
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

    def measure(point):
        time.sleep(0.05)
        return {"value": 1}

    first = Sweep(tmp_path, "exp", version="v1").run(_points(4), measure, progress=False, deadline_s=0.01)
    assert (first.measured, first.left) == (1, 3) and len(RecordStore(tmp_path / "rows.jsonl").rows()) == 1
    assert "3 left for the next run" in first.line("exp")
    second = Sweep(tmp_path, "exp", version="v1").run(_points(4), measure, progress=False)
    assert (second.measured, second.skipped, second.left) == (3, 1, 0)


@pytest.mark.parametrize("name", VARIANTS)
def test_bf16_measurement_runs_under_bf16_autocast(name):
    """The gpu-check measures under bf16 autocast: the measured call must really run in bf16."""
    model = build_model(name, "tiny").eval()
    views = synthetic_views(1, 2, 2, 32, "cpu")
    seen = []
    hook = model.head.proj.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    result = measure_call(lambda: model(*views), torch.device("cpu"), "bfloat16", Measurement(warmup=1, runs=2))
    assert result["runs"] == 2 and seen and set(seen) == {torch.bfloat16}
    seen.clear()
    measure_call(lambda: model(*views), torch.device("cpu"), "float32", Measurement(warmup=0, runs=1))
    assert set(seen) == {torch.float32}
    hook.remove()
    if name == "efficient_lvsm":
        renderer = model.incremental(views[3], views[4], 32, 32)
        result = measure_call(lambda: renderer.add_views(*views[:3]).render(), torch.device("cpu"), "bfloat16",
                              Measurement(warmup=0, runs=1))
        assert result["runs"] == 1


def test_timed_runs_stop_when_the_budget_is_spent_but_never_before_the_minimum(monkeypatch):
    """On a loaded machine (runs slower than the warm-up promised) the point is still measured, with fewer runs."""
    from harness.profile.measure import timed_runs
    slow = iter([400.0] * 50)
    monkeypatch.setattr(measure_module, "time_once_ms", lambda fn, device: next(slow))
    stats = timed_runs(lambda: None, torch.device("cpu"), runs=20, warmup=1, min_runs=3, budget_s=0.5)
    assert stats.runs == 3  # 0.5 s is spent after 2 runs; the minimum is 3
    fast = iter([10.0] * 50)
    monkeypatch.setattr(measure_module, "time_once_ms", lambda fn, device: next(fast))
    assert timed_runs(lambda: None, torch.device("cpu"), runs=20, warmup=1, min_runs=3, budget_s=0.5).runs == 20


def test_attention_backend_is_read_off_kernel_names():
    from harness.profile.measure import attention_backends
    assert attention_backends(["void pytorch_flash::flash_fwd_kernel<...>", "ampere_bf16_gemm"]) == ["flash"]
    assert attention_backends(["fmha_cutlassF_bf16_aligned_64x64_rf_sm80"]) == ["efficient"]
    assert attention_backends(["cudnn_generated_fort_native_sdpa_sm90_flash_fprop"]) == ["cudnn"]
    assert attention_backends(["ampere_bf16_s16816gemm_bf16 (bmm)", "softmax_warp_forward"]) == ["math"]
    assert attention_backends(["elementwise_kernel"]) == []


@pytest.mark.slow
def test_profile_rows_carry_the_sdpa_axis_and_mfu_against_a_matmul_measured_in_the_same_run(tmp_path):
    path = _write(tmp_path, f"""
kind: profile
models: [efficient_lvsm]
preset: tiny
n_inputs: [2]
n_targets: [1]
measure: {{device: cpu, warmup: 1, runs: 2, sdpa_backend: math}}
output_dir: {tmp_path / 'out'}
""")
    row = run_experiment(path, progress=False)[0]
    assert row["status"] == "ok" and row["sdpa_backend"] == "math" and row["compiled"] is False
    assert row["measure"]["sdpa_backend"] == "math"  # part of the point: another backend is another point
    assert row["matmul_peak_tflops"] > 0 and row["sdpa_backend_used"] == "cpu"
    assert row["mfu"] == pytest.approx(row["gflops"] / 1e3 / (row["latency_ms"] / 1e3) / row["matmul_peak_tflops"], rel=1e-6)
    assert "MFU" in (tmp_path / "out" / "exp.md").read_text()


@pytest.mark.slow
def test_compiled_points_compile_outside_the_timing_and_a_timed_call_may_not_recompile(tmp_path, monkeypatch):
    """Each point's first call compiles for its shapes (compile_s); the timed calls would fail
    rather than recompile (and be timed compiling) or silently run eagerly."""
    torch._dynamo.reset()
    eager_backend = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: eager_backend(model, backend="eager"))  # no C++ build in tests
    path = _write(tmp_path, f"""
kind: profile
models: [lvsm_decoder_only]
preset: tiny
n_inputs: [1, 2]
n_targets: [1]
measure: {{device: cpu, warmup: 1, runs: 2, compile: true}}
output_dir: {tmp_path / 'out'}
""")
    rows = run_experiment(path, progress=False)
    assert [r["status"] for r in rows] == ["ok", "ok"] and all(r["compiled"] and r["compile_s"] > 0 for r in rows)

    torch._dynamo.reset()
    settings = Measurement(device="cpu", compile=True)
    model = build_model("lvsm_decoder_only", "tiny").eval()
    fn, compile_s = measure_module.first_call(measure_module.compiled(model, settings), settings,
                                              lambda f: f(*synthetic_views(1, 1, 1, 32, "cpu")))
    assert compile_s > 0
    with torch.no_grad():
        fn(*synthetic_views(1, 1, 1, 32, "cpu"))  # same shapes: no recompile
        with pytest.raises(torch._dynamo.exc.RecompileError):
            fn(*synthetic_views(1, 3, 1, 32, "cpu"))


def test_compiled_passes_inductor_options_through_and_leaves_an_eager_point_alone(monkeypatch):
    seen = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: seen.append(kwargs) or model)
    model = build_model("efficient_lvsm", "tiny")
    assert measure_module.compiled(model, Measurement(device="cpu"), {"cpp_wrapper": True}) is model and seen == []
    measure_module.compiled(model, Measurement(device="cpu", compile=True), {"cpp_wrapper": True})
    measure_module.compiled(model, Measurement(device="cpu", compile=True))
    assert seen == [{"options": {"cpp_wrapper": True}}, {}]


def test_the_kv_cache_kind_refuses_compile_rather_than_label_eager_rows_compiled():
    with pytest.raises(ConfigError, match="compile: true is not supported by profile_kv_cache"):
        load_experiment(ROOT / "experiments" / "kv_cache.yaml", ["measure.compile=true"])
    assert load_experiment(ROOT / "experiments" / "kv_cache.yaml").measure.compile is False


def test_the_headline_pair_is_timed_in_alternation_and_its_ratio_taken_round_by_round(monkeypatch):
    """A machine that slows down between rounds moves both models alike within a round: the median
    of per-round ratios (2.0 here) is what the pair costs, the ratio of medians (8 / 3) is not."""
    order, planted = [], {"a": [4.0, 8.0, 12.0], "b": [2.0, 4.0, 3.0]}  # 3 timed rounds (the warm-up is not timed)

    def fake_time_once_ms(fn, device):
        name = fn()
        order.append(name)
        return planted[name].pop(0)

    monkeypatch.setattr(measure_module, "time_once_ms", fake_time_once_ms)
    settings = Measurement(device="cpu", warmup=0, runs=3, min_runs=3)
    out = measure_module.alternating_ratio(lambda: "a", lambda: "b", torch.device("cpu"), "float32", settings)
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert out["rounds"] == 3 and out["latency_ratio"] == 2.0 and (out["first_ms"], out["second_ms"]) == (8.0, 3.0)


def test_a_point_timed_while_other_processes_load_the_cores_is_marked_noisy():
    """Busy processes on every core take the CPU from the timed threads: the point's process CPU time
    falls well under its threads' share of the wall time, and the point is marked noisy with that reason."""
    import time
    from harness.profile.measure import median_iqr, quartiles
    a = torch.randn(384, 384)
    settings = Measurement(device="cpu", warmup=1, runs=40, min_runs=40)
    quiet = measure_call(lambda: a @ a, torch.device("cpu"), "float32", settings)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * (os.cpu_count() or 1))]
    try:
        time.sleep(0.5)
        loaded = measure_call(lambda: a @ a, torch.device("cpu"), "float32", settings)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert loaded["noisy"] and "contended: process CPU time" in loaded["noisy_reason"], loaded
    assert loaded["cpu_per_wall"] < quiet["cpu_per_wall"] and "contended" in quiet
    # One quartile definition for every IQR (latencies and ratios alike).
    assert quartiles([1, 2, 3, 4]) == (1.75, 2.5, 3.25) and median_iqr([1, 2, 3, 4]) == (2.5, 1.5)
