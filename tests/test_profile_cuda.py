"""CUDA paths of the profiling harness: CUDA-event timing under bf16 autocast, CUDA peak memory and
a small sweep on the GPU. Skipped where no CUDA device is present; `make gpu-check` runs them."""
from __future__ import annotations

import pytest
import torch

from harness.profile.measure import PeakMemory, measure_call
from harness.schema import Measurement

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_cuda_peak_memory_sees_a_known_allocation():
    device = torch.device("cuda")
    with PeakMemory(device) as memory:
        x = torch.empty(64 * 2 ** 20, dtype=torch.uint8, device=device)  # 64 MiB
        del x
    assert memory.columns["mem_kind"] == "cuda max_memory_allocated"
    assert memory.columns["peak_mem_mb"] - memory.columns["baseline_mem_mb"] >= 64
    assert memory.columns["peak_reserved_mb"] >= memory.columns["peak_mem_mb"]


def test_cuda_event_timing_under_bf16_autocast():
    device = torch.device("cuda")
    a = torch.randn(2048, 2048, device=device)
    dtypes = []

    def step():
        out = a @ a
        dtypes.append(out.dtype)
        return out

    result = measure_call(step, device, "bfloat16", Measurement(warmup=2, runs=20))
    assert result["runs"] == 20 and result["latency_ms"] > 0
    assert result["latency_q1_ms"] <= result["latency_ms"] <= result["latency_q3_ms"]
    assert set(dtypes) == {torch.bfloat16}


def test_tiny_profile_sweep_on_cuda(tmp_path):
    from harness.schema import run_experiment
    path = tmp_path / "exp.yaml"
    path.write_text(f"""
kind: profile
preset: tiny
n_inputs: [1, 2]
n_targets: [2]
measure: {{device: cuda, dtype: bfloat16, warmup: 1, runs: 3}}
fit_n: [1, 64]
output_dir: {tmp_path / 'out'}
""")
    rows = run_experiment(path, progress=False)
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows), [r.get("error") for r in rows]
    assert {r["dtype"] for r in rows} == {"bfloat16"} and {r["device_type"] for r in rows} == {"cuda"}
    assert all(r["peak_reserved_mb"] is not None for r in rows)


def test_kv_cache_render_matches_full_forward_on_cuda():
    """The cached path that the kv_cache experiment times renders what the full model renders."""
    from harness.profile.measure import synthetic_views
    from models import build_model
    model = build_model("efficient_lvsm", "tiny").cuda().eval()
    images, c2w, k, tc, tk = synthetic_views(1, 4, 2, 32, "cuda")
    with torch.no_grad():
        full = model(images, c2w, k, tc, tk)
        renderer = model.incremental(tc, tk, 32, 32).add_views(images[:, :3], c2w[:, :3], k[:, :3])
        cached = renderer.add_views(images[:, 3:], c2w[:, 3:], k[:, 3:]).render()
    torch.testing.assert_close(cached, full, atol=1e-3, rtol=1e-3)
