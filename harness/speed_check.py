"""Issue 12 benchmark: are our forwards at least as fast as the official code at equal FLOPs?

The official code cannot run here, so speed is stated as a fraction of what this CPU's own matrix
multiply reaches in the same run: a variant's forward GFLOP/s (analytic FLOPs, which equal what
FlopCounterMode counts with the math attention backend) over torch.mm 2048^3 float32 GFLOP/s. On a
shared CPU the load changes from one second to the next, so the two are timed alternately, one mm
then one forward; each pair gives one fraction and the table reports the median over the pairs.
The official code's fractions were measured on this CPU by whoever filed the issue and are copied
from it.

A second table checks the small preset's latency advantage of Efficient-LVSM over decoder-only at
N=2, M=1 against their FLOP ratio, where per-operation overhead rather than arithmetic decides.

    python -m harness.speed_check [--threads 2] [--repeats K] [--out DIR]

This is a benchmark, not a test: nothing here fails when a target is missed.
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from tqdm import tqdm

from models import build_model

from .provenance import environment, git_commit
from .tables import markdown, write_tables

log = logging.getLogger("harness.speed_check")

VARIANTS = {"lvsm_decoder_only": "decoder-only", "lvsm_encoder_decoder": "encoder-decoder", "efficient_lvsm": "Efficient-LVSM"}
# The small preset already has patch 8, decoder-only depth 6, encoder-decoder 3+3 with 256
# latents and Efficient-LVSM 3+3; the anchor raises the image size to 128 px.
ANCHOR = {"image_size": 128, "dim": 256, "head_dim": 64}
POINTS = ((2, 1), (2, 8), (8, 8))
MM_SIZE = 2048
OFFICIAL_SOURCE = "issue 12, official code measured on this CPU"
OFFICIAL_FRACTION = {
    ("lvsm_decoder_only", 2, 1): 0.74, ("lvsm_decoder_only", 2, 8): 0.77, ("lvsm_decoder_only", 8, 8): 0.71,
    ("lvsm_encoder_decoder", 2, 1): 0.72, ("lvsm_encoder_decoder", 2, 8): 0.72, ("lvsm_encoder_decoder", 8, 8): 0.78,
    ("efficient_lvsm", 2, 1): 0.71, ("efficient_lvsm", 2, 8): 0.81, ("efficient_lvsm", 8, 8): 0.94,
}
# Small preset, N=2, M=1: (decoder-only latency / Efficient-LVSM latency) / (their FLOP ratio).
SMALL_RATIO_TARGET = 0.85
SMALL_POINT = (2, 1)


def synthetic_views(n: int, m: int, size: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random images and simple cameras: the cost of a forward does not depend on their values."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(1, n, 3, size, size, generator=g)

    def cameras(views: int) -> tuple[torch.Tensor, torch.Tensor]:
        c2w = torch.eye(4).repeat(1, views, 1, 1)
        c2w[..., :3, 3] = 0.5 * torch.randn(1, views, 3, generator=g)
        return c2w, torch.tensor([float(size), float(size), size / 2, size / 2]).repeat(1, views, 1)

    return (images, *cameras(n), *cameras(m))


def seconds(fn: Callable[[], object]) -> float:
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def mm_call() -> tuple[Callable[[], object], int]:
    """The reference: one 2048^3 float32 product, and its FLOPs (2 per multiply-add)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(MM_SIZE, MM_SIZE, generator=g), torch.randn(MM_SIZE, MM_SIZE, generator=g)
    out = torch.empty(MM_SIZE, MM_SIZE)
    return (lambda: torch.mm(a, b, out=out)), 2 * MM_SIZE ** 3


def forward_call(name: str, n: int, m: int, preset: str = "small", **overrides) -> tuple[Callable[[], object], int]:
    torch.manual_seed(0)
    model = build_model(name, preset, **overrides).eval()
    views = synthetic_views(n, m, model.config.image_size)

    def call():
        with torch.no_grad():
            return model(*views)

    return call, model.analytic_flops(n, m).flops


def interleaved(calls: list[Callable[[], object]], repeats: int, warmup: int = 1) -> list[list[float]]:
    """Seconds per call, the calls run in turn `repeats` times after `warmup` untimed rounds."""
    for _ in range(warmup):
        for call in calls:
            call()
    samples: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for call, times in zip(calls, samples):
            times.append(seconds(call))
    return samples


def anchor_row(name: str, n: int, m: int, mm: Callable[[], object], mm_flops: int, repeats: int) -> dict:
    forward, flops = forward_call(name, n, m, **ANCHOR)
    mm_s, forward_s = interleaved([mm, forward], repeats)
    fractions = [(flops / f) / (mm_flops / t) for t, f in zip(mm_s, forward_s)]
    ours = statistics.median(fractions)
    official = OFFICIAL_FRACTION[(name, n, m)]
    q1, _, q3 = statistics.quantiles(fractions, n=4) if len(fractions) > 1 else (ours, ours, ours)
    return {
        "variant": VARIANTS[name], "N": n, "M": m, "GFLOPs": flops / 1e9,
        "latency ms": 1e3 * statistics.median(forward_s),
        "GFLOP/s": flops / statistics.median(forward_s) / 1e9,
        "mm GFLOP/s": mm_flops / statistics.median(mm_s) / 1e9,
        "fraction of mm": ours, "fraction IQR": q3 - q1,
        "official fraction": official, "at or above official": "yes" if ours >= official else "no",
    }


def small_ratio_row(repeats: int) -> dict:
    """Decoder-only and Efficient-LVSM timed alternately at the small preset, N=2, M=1."""
    n, m = SMALL_POINT
    (slow, slow_flops), (fast, fast_flops) = (forward_call(name, n, m) for name in ("lvsm_decoder_only", "efficient_lvsm"))
    slow_s, fast_s = interleaved([slow, fast], repeats, warmup=3)
    latency_ratio = statistics.median(s / f for s, f in zip(slow_s, fast_s))
    flop_ratio = slow_flops / fast_flops
    return {
        "N": n, "M": m, "decoder-only ms": 1e3 * statistics.median(slow_s), "Efficient-LVSM ms": 1e3 * statistics.median(fast_s),
        "latency ratio": latency_ratio, "FLOP ratio": flop_ratio, "latency ratio / FLOP ratio": latency_ratio / flop_ratio,
        "target": SMALL_RATIO_TARGET, "met": "yes" if latency_ratio / flop_ratio >= SMALL_RATIO_TARGET else "no",
    }


def load_average() -> str:
    """The 1-minute load average: on a shared CPU, what else ran beside the measurement."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def provenance_notes(threads: int, repeats: int, load_before: str) -> list[str]:
    env = environment("cpu")
    return [
        f"device: {env['device']}; torch {env['torch']}, {threads} threads, float32, eval, no_grad; "
        f"1-min load average {load_before} at the start, {load_average()} at the end",
        f"code: commit {git_commit()}; measured {env['timestamp']}",
        f"fraction of mm: forward GFLOP/s over torch.mm {MM_SIZE}^3 float32 GFLOP/s, median over {repeats} interleaved "
        "(mm, forward) pairs after one untimed pair; FLOPs from model.analytic_flops (2 per multiply-add, attention included)",
        "anchor: 128x128 px, patch 8, dim 256, head dim 64; decoder-only 6 layers, encoder-decoder 3+3 with 256 latents, "
        "Efficient-LVSM 3+3; batch 1",
        f"official fraction: {OFFICIAL_SOURCE}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.speed_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2, as the official figures)")
    parser.add_argument("--repeats", type=int, default=7, help="timed (mm, forward) pairs per point (default 7)")
    parser.add_argument("--out", default="results/speed_check", help="output folder (default results/speed_check)")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be positive")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    load_before = load_average()
    if load_before != "n/a" and float(load_before) >= 1.0:
        log.warning("load average %s before the start: other processes share the CPU, and with more than one "
                    "thread each parallel op may wait for a descheduled worker; the fractions will read low", load_before)
    mm, mm_flops = mm_call()
    points = [(name, n, m) for name in VARIANTS for n, m in POINTS]
    rows = []
    for name, n, m in tqdm(points, desc="speed check", unit="point"):
        rows.append(anchor_row(name, n, m, mm, mm_flops, args.repeats))
        log.info("%s N=%d M=%d: %.3f of mm (official %.2f)", name, n, m, rows[-1]["fraction of mm"], rows[-1]["official fraction"])
    log.info("small preset: decoder-only vs Efficient-LVSM at N=%d, M=%d", *SMALL_POINT)
    small = small_ratio_row(max(args.repeats, 15))

    notes = provenance_notes(args.threads, args.repeats, load_before)
    table = pd.DataFrame(rows)
    write_tables(table, args.out, "speed_check", "Forward GFLOP/s as a fraction of torch.mm, ours vs the official code", notes)
    small_table = pd.DataFrame([small])
    write_tables(small_table, args.out, "small_preset_ratio",
                 "Small preset, N=2, M=1: decoder-only / Efficient-LVSM latency as a fraction of their FLOP ratio",
                 notes[:2] + [f"small preset (64 px); the two models timed alternately, median of {max(args.repeats, 15)} "
                              "per-pair latency ratios; target from issue 12"])
    log.info("tables written to %s", Path(args.out))
    print(markdown(table))
    print()
    print(markdown(small_table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
