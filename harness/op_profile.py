"""Issue 12 profile: where a forward's CPU time goes, and how many bytes it copies.

For each variant at the speed check's anchor configuration and the points (N, M) = (2, 1), (2, 8),
one warm forward is profiled with torch.profiler. Two tables come out:

- `op_profile`: the top operations by self CPU time, with their call counts;
- `op_profile_summary`: per variant and point, the bytes written by copy kernels in one forward.
  `.contiguous()`, `.clone()`, `.reshape()` of a strided view and dtype casts all end in
  `aten::copy_`, so the sum of its destinations' sizes counts every copy of that kind once;
  concatenations (`aten::cat`) build new tensors rather than relayout old ones and are not counted.
  A layout regression (say, a head split that copies again) shows up there as a number; issue 12
  asks for at most 1.5x the official code's bytes at (2, 8).

    python -m harness.op_profile [--threads 2] [--top 12] [--out DIR]

Self CPU times are from one forward on a possibly shared CPU; the byte counts do not depend on load.
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd
import torch
from torch.profiler import ProfilerActivity, profile
from tqdm import tqdm

from .provenance import environment, git_commit
from .speed_check import ANCHOR, VARIANTS, forward_call
from .tables import markdown, write_tables

log = logging.getLogger("harness.op_profile")

POINTS = ((2, 1), (2, 8))
MIB = 2 ** 20
OFFICIAL_SOURCE = "issue 12 (the official code under torch.profiler)"
# Bytes copied per forward at (N, M) = (2, 8) by the official code, and the allowed ratio to them.
OFFICIAL_MIB_AT_2_8 = {"lvsm_decoder_only": 10.0, "lvsm_encoder_decoder": 10.0, "efficient_lvsm": 8.0}
ALLOWED_RATIO = 1.5

# Element sizes under the names torch.profiler gives dtypes in `input_dtypes`.
DTYPE_BYTES = {
    "float": 4, "double": 8, "c10::Half": 2, "c10::BFloat16": 2, "long int": 8, "int": 4, "short int": 2,
    "signed char": 1, "unsigned char": 1, "bool": 1, "c10::complex<float>": 8, "c10::complex<double>": 16,
}


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


def top_ops(prof: profile, k: int) -> list[dict]:
    averages = sorted(prof.key_averages(), key=lambda a: a.self_cpu_time_total, reverse=True)
    total_us = sum(a.self_cpu_time_total for a in averages) or 1.0
    return [{"op": a.key, "self CPU ms": a.self_cpu_time_total / 1e3, "share %": 100 * a.self_cpu_time_total / total_us,
             "calls": a.count} for a in averages[:k]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.op_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--top", type=int, default=12, help="operations listed per variant and point (default 12)")
    parser.add_argument("--out", default="results/op_profile", help="output folder (default results/op_profile)")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.top < 1:
        parser.error("--threads and --top must be positive")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    ops, summary = [], []
    points = [(name, n, m) for name in VARIANTS for n, m in POINTS]
    for name, n, m in tqdm(points, desc="op profile", unit="point"):
        forward, flops = forward_call(name, n, m, **ANCHOR)
        prof = profiled(forward)
        copied, copies = bytes_copied(prof.events())
        total_ms = sum(a.self_cpu_time_total for a in prof.key_averages()) / 1e3
        official = OFFICIAL_MIB_AT_2_8.get(name) if (n, m) == (2, 8) else None
        summary.append({
            "variant": VARIANTS[name], "N": n, "M": m, "GFLOPs": flops / 1e9, "self CPU ms (all ops)": total_ms,
            "copy_ calls": copies, "MiB copied": copied / MIB, "official MiB": official,
            "within 1.5x official": None if official is None else ("yes" if copied / MIB <= ALLOWED_RATIO * official else "no"),
        })
        ops += [{"variant": VARIANTS[name], "N": n, "M": m, "rank": i + 1, **row} for i, row in enumerate(top_ops(prof, args.top))]
        log.info("%s N=%d M=%d: %.2f MiB copied in %d copies", name, n, m, copied / MIB, copies)

    env = environment("cpu")
    notes = [
        f"device: {env['device']}; torch {env['torch']}, {args.threads} threads, float32, eval, no_grad",
        f"code: commit {git_commit()}; measured {env['timestamp']}",
        "anchor: 128x128 px, patch 8, dim 256, head dim 64; decoder-only 6 layers, encoder-decoder 3+3 with 256 latents, "
        "Efficient-LVSM 3+3; batch 1; one warm forward under torch.profiler (record_shapes)",
    ]
    ops_table, summary_table = pd.DataFrame(ops), pd.DataFrame(summary)
    write_tables(ops_table, args.out, "op_profile", f"Top {args.top} operations by self CPU time, one forward", notes)
    write_tables(summary_table, args.out, "op_profile_summary", "Bytes copied per forward (aten::copy_ destinations)",
                 notes + [f"official MiB: {OFFICIAL_SOURCE}; target: at most {ALLOWED_RATIO}x at (2, 8)"])
    log.info("tables written to %s", Path(args.out))
    print(markdown(summary_table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
