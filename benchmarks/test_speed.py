"""Speed across commits (pytest-benchmark): a forward pass of every released variant at the tiny and
small presets, one more target view rendered from an encoded scene, and Efficient-LVSM's KV-cache step.

`make benchmarks` runs these, saves the run under .benchmarks/ with machine and commit info, and
prints each benchmark's change against the last saved run. Not part of `make test`: a time is a
property of the machine, so nothing here asserts one; compare runs of the same machine only.
"""
from __future__ import annotations

import pytest
import torch

from harness.profile.measure import synthetic_views
from models import SHARED_SIZES, build_model, released_models

RELEASED = released_models()
N_INPUT, N_TARGET = 2, 1


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: on a shared CPU, two threads stall at every barrier while another process holds a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(name: str, preset: str):
    torch.manual_seed(0)
    return build_model(name, preset).eval().requires_grad_(False)


@pytest.mark.parametrize("preset", ["tiny", "small"])
@pytest.mark.parametrize("name", RELEASED)
def test_forward(benchmark, name, preset):
    model = _model(name, preset)
    views = synthetic_views(1, N_INPUT, N_TARGET, SHARED_SIZES[preset]['image_size'], "cpu")
    benchmark.extra_info.update(variant=name, preset=preset, n_input=N_INPUT, n_target=N_TARGET, threads=1)
    with torch.no_grad():
        benchmark(model, *views)


@pytest.mark.parametrize("name", RELEASED)
def test_one_more_target(benchmark, name):
    model = _model(name, "small")
    images, c2w, fxfycxcy, target_c2w, target_fxfycxcy = synthetic_views(1, N_INPUT, 1, SHARED_SIZES["small"]["image_size"], "cpu")
    with torch.no_grad():
        state = model.encode_scene(images, c2w, fxfycxcy)
        benchmark.extra_info.update(variant=name, preset="small", n_input=N_INPUT, scene_state=type(model).scene_state or "none")
        benchmark(model.render_scene, state, target_c2w, target_fxfycxcy)


def test_kv_cache_step(benchmark):
    """Efficient-LVSM: one more input view appended to a cache of N, then the targets rendered."""
    model = _model("efficient_lvsm", "small")
    size = SHARED_SIZES["small"]["image_size"]
    images, c2w, fxfycxcy, target_c2w, target_fxfycxcy = synthetic_views(1, N_INPUT + 1, N_TARGET, size, "cpu")
    benchmark.extra_info.update(variant="efficient_lvsm", preset="small", n_cached=N_INPUT)

    def step():
        session = model.incremental(target_c2w, target_fxfycxcy, size, size)
        session.add_views(images[:, :N_INPUT], c2w[:, :N_INPUT], fxfycxcy[:, :N_INPUT])
        return session, images[:, N_INPUT:], c2w[:, N_INPUT:], fxfycxcy[:, N_INPUT:]

    def add_one(session, *view):
        return session.add_views(*view).render()

    with torch.no_grad():
        benchmark.pedantic(add_one, setup=lambda: (step(), {}), rounds=20, warmup_rounds=1)
