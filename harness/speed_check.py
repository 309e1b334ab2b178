"""Issue 12 benchmark: are our forwards at least as fast as the official code at equal FLOPs?

The official code cannot run here, so speed is stated two ways.

- As a fraction of what this CPU's own matrix multiply reaches in the same run: a variant's forward
  GFLOP/s (analytic FLOPs, which equal what FlopCounterMode counts with the math attention backend)
  over torch.mm 2048^3 float32 GFLOP/s. The official fractions were measured by whoever filed the
  issue and are copied from it. They only compare on a CPU path like theirs: their mm ran at
  100.5 GFLOP/s, which is what this machine's mm reaches on the AVX2 path (`--isa avx2`), not on
  its AVX-512 path (about 200 to 290).
- Against a baseline revision of `models/` (`--baseline REV`, by default the code the issue
  measured), loaded from git under another package name and run in the same process with the same
  weights. The issue measured official ms / ours ms at that revision (three runs); times the
  speed-up measured here, that gives official ms / ours ms for this code without the official code.

On a shared CPU the load changes from one second to the next, so the calls are timed in turn (mm,
this code, baseline); each round gives one fraction and one speed-up, and the tables report the
median over the rounds with their interquartile range.

A second table checks the small preset's latency advantage of Efficient-LVSM over decoder-only at
N=2, M=1 against their FLOP ratio: eager (this code and the baseline), eager less each model's
per-operation overhead (the time of a dim-32 twin, timed in the same rounds), and under
torch.compile (compile time reported apart).

    python -m harness.speed_check [--threads 2] [--repeats K] [--out DIR] [--baseline REV|none]
                                  [--isa native|avx2] [--no-compile]

This is a benchmark, not a test: nothing here fails when a target is missed.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import io
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Callable

import pandas as pd
import torch
from tqdm import tqdm

from models import build_model

from .profile.measure import compiled, first_call, interleaved_ms, median_iqr, synthetic_views
from .profile.report import noisy_note
from .provenance import REPO_ROOT, environment, git_commit
from .schema import Measurement
from .tables import markdown, write_tables

log = logging.getLogger("harness.speed_check")

VARIANTS = {"lvsm_decoder_only": "decoder-only", "lvsm_encoder_decoder": "encoder-decoder", "efficient_lvsm": "Efficient-LVSM"}
# The small preset already has patch 8, decoder-only depth 6, encoder-decoder 3+3 with 256
# latents and Efficient-LVSM 3+3; the anchor raises the image size to 128 px.
ANCHOR = {"image_size": 128, "dim": 256, "head_dim": 64}
POINTS = ((2, 1), (2, 8), (8, 8))
MM_SIZE = 2048
CPU = torch.device("cpu")
COMPILED = Measurement(device="cpu", compile=True)
CPP_WRAPPER = {"cpp_wrapper": True}
NOISY_IQR = Measurement().noisy_iqr  # the profiling experiments' default spread limit

OFFICIAL_SOURCE = "issue 12, official code measured on this CPU"
OFFICIAL_FRACTION = {
    ("lvsm_decoder_only", 2, 1): 0.74, ("lvsm_decoder_only", 2, 8): 0.77, ("lvsm_decoder_only", 8, 8): 0.71,
    ("lvsm_encoder_decoder", 2, 1): 0.72, ("lvsm_encoder_decoder", 2, 8): 0.72, ("lvsm_encoder_decoder", 8, 8): 0.78,
    ("efficient_lvsm", 2, 1): 0.71, ("efficient_lvsm", 2, 8): 0.81, ("efficient_lvsm", 8, 8): 0.94,
}
# official ms / ours ms at ISSUE_CODE_REV, the issue's three runs (its table, then its two extra runs).
ISSUE_CODE_REV = "a2a089e1bc0b6bb6019edf44d9de1d4596d00567"  # models/ as the issue measured it (before 830ae32)
ISSUE_OFFICIAL_OVER_OURS = {
    ("lvsm_decoder_only", 2, 1): (0.93, 1.00, 0.95), ("lvsm_decoder_only", 2, 8): (0.95, 0.99, 0.98),
    ("lvsm_decoder_only", 8, 8): (0.96, 1.09, 0.87), ("lvsm_encoder_decoder", 2, 1): (0.90, 0.99, 0.92),
    ("lvsm_encoder_decoder", 2, 8): (0.93, 0.95, 0.90), ("lvsm_encoder_decoder", 8, 8): (0.94, 0.98, 0.98),
    ("efficient_lvsm", 2, 1): (0.90, 0.95, 0.95), ("efficient_lvsm", 2, 8): (0.88, 0.94, 0.96),
    ("efficient_lvsm", 8, 8): (0.92, 0.99, 0.90),
}
# The issue's "ours as a fraction of torch.mm" for ISSUE_CODE_REV (its table): the same code's
# fraction there, to set beside the baseline's fraction here.
ISSUE_BASELINE_FRACTION = {
    ("lvsm_decoder_only", 2, 1): 0.68, ("lvsm_decoder_only", 2, 8): 0.73, ("lvsm_decoder_only", 8, 8): 0.69,
    ("lvsm_encoder_decoder", 2, 1): 0.64, ("lvsm_encoder_decoder", 2, 8): 0.67, ("lvsm_encoder_decoder", 8, 8): 0.73,
    ("efficient_lvsm", 2, 1): 0.64, ("efficient_lvsm", 2, 8): 0.71, ("efficient_lvsm", 8, 8): 0.86,
}
# The CPU path the issue's mm speed points to: PyTorch's own kernels, MKL and oneDNN held to AVX2.
ISA_ENV = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}
# Small preset, N=2, M=1: (decoder-only latency / Efficient-LVSM latency) / (their FLOP ratio).
SMALL_RATIO_TARGET = 0.85
SMALL_POINT = (2, 1)
OVERHEAD_FLOOR_DIM = 32


def noisy(*median_and_iqr: tuple[float, float]) -> str:
    """'noisy' where any (median, IQR) pair spreads past NOISY_IQR of its median: a row to rerun, not to cite."""
    return "noisy" if any(iqr > NOISY_IQR * median for median, iqr in median_and_iqr) else ""


def mm_call() -> tuple[Callable[[], object], int]:
    """The reference: one 2048^3 float32 product, and its FLOPs (2 per multiply-add)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(MM_SIZE, MM_SIZE, generator=g), torch.randn(MM_SIZE, MM_SIZE, generator=g)
    out = torch.empty(MM_SIZE, MM_SIZE)
    return (lambda: torch.mm(a, b, out=out)), 2 * MM_SIZE ** 3


def forward_call(name: str, n: int, m: int, preset: str = "small", **overrides) -> tuple[Callable[[], object], int]:
    torch.manual_seed(0)
    model = build_model(name, preset, **overrides).eval()
    return bound_forward(model, n, m), model.analytic_flops(n, m).flops


def bound_forward(model: torch.nn.Module, n: int, m: int) -> Callable[[], torch.Tensor]:
    views = synthetic_views(1, n, m, model.config.image_size, CPU)

    def call():
        with torch.no_grad():
            return model(*views)

    return call


def baseline_package(rev: str) -> ModuleType:
    """The `models` package as it was at git revision `rev`, imported as `baseline_models` so that
    both versions run side by side in one process (the package imports only itself and torch)."""
    try:
        archive = subprocess.run(["git", "archive", rev, "models"], cwd=REPO_ROOT, capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", b"") or b""
        raise SystemExit(f"error: --baseline {rev}: cannot read models/ at that revision from git "
                         f"({detail.decode(errors='replace').strip() or err})") from None
    folder = Path(tempfile.mkdtemp(prefix="lvsm-baseline-"))
    tarfile.open(fileobj=io.BytesIO(archive.stdout)).extractall(folder, filter="data")
    name = "baseline_models"
    spec = importlib.util.spec_from_file_location(name, folder / "models" / "__init__.py",
                                                  submodule_search_locations=[str(folder / "models")])
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    shutil.rmtree(folder, ignore_errors=True)  # imported: the sources are no longer needed
    return package


def baseline_twin(package: ModuleType, model: torch.nn.Module, name: str, n: int, m: int) -> tuple[Callable[[], torch.Tensor], float]:
    """The baseline revision's `name` with `model`'s config and weights, and its largest render
    difference from `model` on the same views (the two must compute the same function)."""
    # A baseline that predates a config field builds without it: the field is one its variants do not
    # read, and the weights and the render difference below show whether the two still agree.
    known = {f.name for f in dataclasses.fields(package.ModelConfig)}
    config = {key: value for key, value in model.config.to_dict().items() if key in known}
    twin = package.model_class(name)(package.ModelConfig(**config)).eval()
    twin.load_state_dict(model.state_dict())
    call, twin_call = bound_forward(model, n, m), bound_forward(twin, n, m)
    return twin_call, float((call() - twin_call()).abs().max())


def same_models_tree(rev: str, other: str) -> bool:
    """Whether two revisions hold the same models/ (so the issue's ratios apply to `rev`)."""
    def tree(r: str) -> str | None:
        done = subprocess.run(["git", "rev-parse", f"{r}:models"], cwd=REPO_ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else None
    return tree(rev) is not None and tree(rev) == tree(other)


def interleaved(calls: list[Callable[[], object]], repeats: int, warmup: int = 1) -> list[list[float]]:
    """Seconds per call, the calls timed in turn (each round starting one call later) `repeats` times."""
    return [[ms / 1e3 for ms in times] for times in interleaved_ms(calls, CPU, repeats, warmup)]


def anchor_row(name: str, n: int, m: int, mm: Callable[[], object], mm_flops: int, repeats: int,
               baseline: ModuleType | None = None, issue_ratios: bool = False) -> dict:
    torch.manual_seed(0)
    model = build_model(name, "small", **ANCHOR).eval()
    forward, flops = bound_forward(model, n, m), model.analytic_flops(n, m).flops
    calls = [mm, forward]
    if baseline is not None:
        twin, difference = baseline_twin(baseline, model, name, n, m)
        calls.append(twin)
    mm_s, forward_s, *twin_s = interleaved(calls, repeats)
    ours, iqr = median_iqr([(flops / f) / (mm_flops / t) for t, f in zip(mm_s, forward_s)])
    official = OFFICIAL_FRACTION[(name, n, m)]
    row = {
        "variant": VARIANTS[name], "N": n, "M": m, "GFLOPs": flops / 1e9,
        "latency ms": 1e3 * statistics.median(forward_s),
        "GFLOP/s": flops / statistics.median(forward_s) / 1e9,
        "mm GFLOP/s": mm_flops / statistics.median(mm_s) / 1e9,
        "fraction of mm": ours, "fraction IQR": iqr,
        "official fraction": official, "at or above official": "yes" if ours >= official else "no",
        "noisy": noisy((ours, iqr)),
    }
    if twin_s:
        speedup, speedup_iqr = median_iqr([b / f for b, f in zip(twin_s[0], forward_s)])
        row |= {"baseline ms": 1e3 * statistics.median(twin_s[0]),
                "baseline fraction": statistics.median((flops / b) / (mm_flops / t) for t, b in zip(mm_s, twin_s[0])),
                "speed-up vs baseline": speedup, "speed-up IQR": speedup_iqr, "baseline max |diff|": difference,
                "noisy": noisy((ours, iqr), (speedup, speedup_iqr))}
        if issue_ratios:
            # official ms / ours ms = (official ms / baseline ms, the issue's) x (baseline ms / ours ms, here)
            issue = statistics.median(ISSUE_OFFICIAL_OVER_OURS[(name, n, m)])
            row |= {"issue baseline fraction": ISSUE_BASELINE_FRACTION[(name, n, m)],
                    "issue official/baseline": issue, "official/ours (derived)": issue * speedup,
                    "as fast as official": "yes" if issue * speedup >= 1.0 else "no"}
    return row


SMALL_PAIR = ("lvsm_decoder_only", "efficient_lvsm")


def compiled_forward(model: torch.nn.Module, n: int, m: int,
                     inductor_options: dict | None = None) -> tuple[Callable[[], torch.Tensor], float]:
    """`model` under torch.compile (inductor, with `inductor_options`) and the seconds its first call
    took, through the profiler's `first_call`: a timed call that would recompile fails instead."""
    views = synthetic_views(1, n, m, model.config.image_size, CPU)
    fn, compile_s = first_call(compiled(model, COMPILED, inductor_options), COMPILED, lambda f: f(*views))

    def call():
        with torch.no_grad():
            return fn(*views)

    return call, compile_s


def small_ratio_rows(repeats: int, baseline: ModuleType | None, compile_too: bool) -> list[dict]:
    """Decoder-only and Efficient-LVSM timed alternately at the small preset, N=2, M=1: eager (this
    code, the baseline) and compiled. Each way gives one row; a way that fails gives its reason."""
    n, m = SMALL_POINT
    models = {}
    for name in SMALL_PAIR:
        torch.manual_seed(0)
        models[name] = build_model(name, "small").eval()
    slow, fast = models.values()
    flop_ratio = slow.analytic_flops(n, m).flops / fast.analytic_flops(n, m).flops
    ways: list[tuple[str, Callable[[], tuple[list[Callable], str]]]] = [
        ("eager", lambda: ([bound_forward(mod, n, m) for mod in models.values()], ""))]

    def with_floor() -> tuple[list[Callable], str]:
        # Twins with dim 32 (head dim 8: the same 4 heads, tokens, depth and op sequence) do next to no
        # arithmetic, so their time is each model's per-op overhead; timed in the same rounds, it is
        # taken off each model's time, and what is left is what its kernels take.
        floors = [build_model(name, "small", dim=OVERHEAD_FLOOR_DIM, head_dim=OVERHEAD_FLOOR_DIM // 4).eval() for name in models]
        return [bound_forward(mod, n, m) for mod in [*models.values(), *floors]], ""
    ways.append((f"eager, less the per-op overhead (dim-{OVERHEAD_FLOOR_DIM} twins)", with_floor))
    if baseline is not None:
        ways.append(("eager, baseline", lambda: ([baseline_twin(baseline, mod, name, n, m)[0] for name, mod in models.items()], "")))
    if compile_too:
        def compile_both(options: dict | None) -> tuple[list[Callable], str]:
            pairs = [compiled_forward(mod, n, m, options) for mod in models.values()]
            return [call for call, _ in pairs], " / ".join(f"{s:.1f}" for _, s in pairs)
        ways.append(("torch.compile", lambda: compile_both(None)))
        # Inductor's C++ wrapper launches the kernels from C++ instead of Python: the least per-op
        # overhead this CPU offers.
        ways.append(("torch.compile, C++ wrapper", lambda: compile_both(CPP_WRAPPER)))
    rows = []
    for way, make in ways:
        row = {"mode": way, "N": n, "M": m}
        try:
            calls, compile_s = make()
            slow_s, fast_s, *floor_s = interleaved(calls, repeats, warmup=3)
            if floor_s:
                slow_s, fast_s = ([t - t0 for t, t0 in zip(times, floor)] for times, floor in zip((slow_s, fast_s), floor_s))
        except Exception as err:  # one failing way (no C++ compiler for inductor, say) is recorded, not fatal
            log.warning("small preset, %s: not measured: %s", way, err)
            rows.append(row | {"FLOP ratio": flop_ratio, "target": SMALL_RATIO_TARGET,
                               "met": f"not measured: {type(err).__name__}: {str(err).splitlines()[0][:120]}"})
            continue
        latency_ratio, ratio_iqr = median_iqr([s / f for s, f in zip(slow_s, fast_s)])
        rows.append(row | {
            "decoder-only ms": 1e3 * statistics.median(slow_s), "Efficient-LVSM ms": 1e3 * statistics.median(fast_s),
            "latency ratio": latency_ratio, "ratio IQR": ratio_iqr, "FLOP ratio": flop_ratio,
            "latency ratio / FLOP ratio": latency_ratio / flop_ratio, "compile s (dec / eff)": compile_s or "n/a",
            "target": SMALL_RATIO_TARGET,
            "met": "n/a: diagnostic" if floor_s else "yes" if latency_ratio / flop_ratio >= SMALL_RATIO_TARGET else "no",
            "noisy": noisy((latency_ratio, ratio_iqr)),
        })
    return rows


def load_average() -> str:
    """The 1-minute load average: on a shared CPU, what else ran beside the measurement."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def provenance_notes(threads: int, repeats: int, load_before: str, isa: str) -> list[str]:
    env = environment("cpu")
    return [
        f"device: {env['device']}; CPU path {torch.backends.cpu.get_cpu_capability()} ({isa}); torch {env['torch']}, "
        f"{threads} threads, float32, eval, no_grad; 1-min load average {load_before} at the start, {load_average()} at the end",
        f"code: commit {git_commit()}; measured {env['timestamp']}",
        f"fraction of mm: forward GFLOP/s over torch.mm {MM_SIZE}^3 float32 GFLOP/s, median over {repeats} interleaved "
        "(mm, forward) pairs after one untimed pair; FLOPs from model.analytic_flops (2 per multiply-add, attention included)",
        "anchor: 128x128 px, patch 8, dim 256, head dim 64; decoder-only 6 layers, encoder-decoder 3+3 with 256 latents, "
        "Efficient-LVSM 3+3; batch 1",
        f"official fraction: {OFFICIAL_SOURCE}",
    ]


def baseline_notes(rev: str, issue_ratios: bool) -> list[str]:
    notes = [f"baseline: models/ at {rev}, same weights (largest render difference in `baseline max |diff|`), timed in the "
             "same rounds; speed-up = baseline ms / ours ms, median over the rounds"]
    if issue_ratios:
        notes.append("official/ours (derived): the issue's official ms / ours ms at the baseline revision (median of its "
                     "three runs) times the speed-up measured here; at or above 1.0, this code is as fast as the official")
        notes.append("issue baseline fraction: the fraction the issue measured for the baseline revision, beside `baseline "
                     "fraction` measured here for the same code: where they differ, the official fractions (measured "
                     "beside the issue's) do not carry over to this CPU path")
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.speed_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2, as the official figures)")
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds (mm, forward, baseline forward) per point (default 9)")
    parser.add_argument("--out", default="results/speed_check", help="output folder (default results/speed_check)")
    parser.add_argument("--baseline", default=ISSUE_CODE_REV,
                        help="git revision whose models/ to time beside this code, or 'none' (default: the code issue 12 measured)")
    parser.add_argument("--isa", choices=["native", *ISA_ENV], default="native",
                        help="CPU path: native, or avx2 (PyTorch, MKL and oneDNN held to AVX2, as the issue's mm speed suggests)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row of the small-preset table")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be positive")
    if args.isa != "native" and os.environ.get("LVSM_SPEED_CHECK_ISA") != args.isa:
        # The ISA is fixed when torch loads, so the run starts again in a process that has it set.
        env = os.environ | ISA_ENV[args.isa] | {"LVSM_SPEED_CHECK_ISA": args.isa}
        return subprocess.call([sys.executable, "-m", "harness.speed_check", *(argv if argv is not None else sys.argv[1:])], env=env)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    baseline = None if args.baseline == "none" else baseline_package(args.baseline)
    issue_ratios = baseline is not None and same_models_tree(args.baseline, ISSUE_CODE_REV)

    load_before = load_average()
    if load_before != "n/a" and float(load_before) >= 1.0:
        log.warning("load average %s before the start: other processes share the CPU, and with more than one "
                    "thread each parallel op may wait for a descheduled worker; the fractions will read low", load_before)
    mm, mm_flops = mm_call()
    points = [(name, n, m) for name in VARIANTS for n, m in POINTS]
    rows = []
    for name, n, m in tqdm(points, desc="speed check", unit="point"):
        rows.append(anchor_row(name, n, m, mm, mm_flops, args.repeats, baseline, issue_ratios))
        log.info("%s N=%d M=%d: %.3f of mm (official %.2f)%s", name, n, m, rows[-1]["fraction of mm"], rows[-1]["official fraction"],
                 f", {rows[-1]['speed-up vs baseline']:.3f}x the baseline" if baseline is not None else "")
    log.info("small preset: decoder-only vs Efficient-LVSM at N=%d, M=%d", *SMALL_POINT)
    small_repeats = max(args.repeats, 15)
    small = small_ratio_rows(small_repeats, baseline, not args.no_compile)

    notes = provenance_notes(args.threads, args.repeats, load_before, args.isa)
    if baseline is not None:
        notes += baseline_notes(args.baseline, issue_ratios)
    table = pd.DataFrame(rows)
    write_tables(table, args.out, "speed_check", "Forward GFLOP/s as a fraction of torch.mm, ours vs the official code",
                 notes + noisy_note(table, NOISY_IQR, "fraction or speed-up"))
    small_table = pd.DataFrame(small)
    write_tables(small_table, args.out, "small_preset_ratio",
                 "Small preset, N=2, M=1: decoder-only / Efficient-LVSM latency as a fraction of their FLOP ratio",
                 notes[:2] + noisy_note(small_table, NOISY_IQR, "latency-ratio") + [
                     f"small preset (64 px); the two models timed alternately, median of {small_repeats} per-pair "
                     "latency ratios (IQR beside it); target from issue 12",
                     f"less the per-op overhead: each round, each model's time less that of its dim-{OVERHEAD_FLOOR_DIM} twin "
                     "(same heads, tokens, depth and ops, next to no arithmetic), timed in the same round: the ratio its "
                     "kernels alone reach, a diagnostic, not the target's measure",
                     "torch.compile: inductor, default mode (C++ wrapper: options cpp_wrapper=True, the generated "
                     "code launches its kernels from C++); compile seconds are the first call's (far shorter when inductor's "
                     "on-disk cache already holds the graphs), never in a latency; "
                     "a timed call that would recompile fails the row"])
    log.info("tables written to %s", Path(args.out))
    print(markdown(table))
    print()
    print(markdown(small_table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
