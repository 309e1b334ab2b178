"""Kind `parity`: each variant beside the official code with the same weights, and the official data
loader beside ours (experiments/parity.yaml, `make parity OFFICIAL_LVSM=DIR OFFICIAL_EFFICIENT_LVSM=DIR
OFFICIAL_LACT=DIR`).

Per variant and (N, M) point: the largest difference between the two renders of one batch, the
FLOPs of both forwards (torch's FlopCounterMode, attention through SDPA's math kernel so that it is
counted), and their latency timed in alternation (rounds rotated; the official / ours ratio taken
per round; median and IQR). A variant whose official step rounds to bfloat16 (LaCT's Newton-Schulz)
is compared at the tolerance with that step in float32 in both (portable across CPUs); the bfloat16
difference is reported beside it, and the latency is of the released bfloat16 step, ours with the
kernel this machine chose. Per LVSM-family checkout: `loader.loader_parity` on the user's scene or a
built-in RealEstate10K chunk. Checkouts not given are skipped with one line; a checkout given but not
what it claims stops the run before any work; each point is one row.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Literal, Mapping

import pandas as pd
import torch
from pydantic import Field, field_validator
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from models import build_model, label

from ..errors import MissingResource
from ..pipeline import Plan, Report, Table, by_config, failure_notes, ok_frame, run_plan
from ..report import preset_setting
from ..profile.measure import interleaved_ms, median_iqr, refuse_shared_cores, synthetic_views
from ..provenance import environment, measured_by, numerics_text
from ..schema import ExperimentBase, Kind, PositiveFloat, Positive, PresetName, RunOptions, Spec
from .loader import LOADER_REPOSITORIES, LOADER_SOURCES, loader_parity
from .official import build_pair, check_checkout, official_code, official_variants, repositories, stand_ins


class ViewPoint(Spec):
    n_input: Positive
    n_target: Positive


class ParitySpec(ExperimentBase):
    kind: Literal["parity"]
    models: list[str] = Field(default_factory=lambda: list(official_variants()), min_length=1)  # variants with an official counterpart
    preset: PresetName = "small"
    overrides: dict[str, Any] = {}
    points: list[ViewPoint] = Field(default=[ViewPoint(n_input=2, n_target=1)], min_length=1)
    batch: Positive = 1
    rounds: Positive = 7  # timed rounds per point, each timing both once
    warmup: Positive = 1
    threads: Positive = 2
    seed: int = 0
    # Checkouts of the official repositories, by the variable each variant's official code names (`make
    # parity OFFICIAL_LVSM=DIR`); a variable left out is read from the environment ($ENV_VARS allowed in
    # values; empty: that repository's variants are skipped).
    checkouts: dict[str, str] = {}
    scene: str = ""  # an LVSM-layout scene for the loader check; empty: a built-in RealEstate10K chunk
    loader_image_size: Positive = 256
    loader_patch_size: Positive = 8
    render_tolerance: PositiveFloat = 1e-5

    def preset_device(self) -> str:
        return "cpu"

    @field_validator("models")
    @classmethod
    def _official_counterparts(cls, models: list[str]) -> list[str]:
        unknown = [m for m in models if m not in official_variants()]
        if unknown:
            raise ValueError(f"{unknown[0]!r} has no official counterpart; expected some of {', '.join(official_variants())}")
        return models

    def missing_resources(self) -> list[str]:
        given = self.given_checkouts()
        codes = official_variants()
        if not any(given[codes[m].repository] for m in self.models):  # nothing asked for could be done
            return [f"no official checkout given for {', '.join(self.models)}; give "
                    + " ".join(dict.fromkeys(f"{codes[m].variable}=DIR (a checkout of {codes[m].repository})"
                                             for m in self.models))]
        missing = []
        for repo, path in given.items():
            try:
                if path:
                    check_checkout(path, repo)
            except MissingResource as error:
                missing.append(str(error))
        return missing

    def scene_path(self) -> str:
        value = os.path.expandvars(self.scene)
        return "" if "$" in value else value

    @field_validator("checkouts")
    @classmethod
    def _known_variables(cls, checkouts: dict[str, str]) -> dict[str, str]:
        known = sorted({code.variable for code in repositories().values()})
        unknown = [name for name in checkouts if name not in known]
        if unknown:
            raise ValueError(f"{unknown[0]!r} names no official repository; expected some of {', '.join(known)}")
        return checkouts

    def given_checkouts(self) -> dict[str, str]:
        """Each official repository -> the checkout given for it ('' where none)."""
        given = {}
        for repository, code in repositories().items():
            raw = os.path.expandvars(self.checkouts.get(code.variable, f"${code.variable}"))
            given[repository] = raw if raw and "$" not in raw else ""
        return given


def source_digest(checkout: Path) -> str:
    """What identifies the official code measured: a hash of its Python sources (a checkout need not be a git clone)."""
    digest = hashlib.sha1()
    for path in sorted(checkout.rglob("*.py")):
        digest.update(str(path.relative_to(checkout)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def counted_flops(call) -> int:
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops()


def measure_model(spec: ParitySpec, point: Mapping[str, Any]) -> dict[str, Any]:
    checkout = Path(point["checkout"])
    n, m, b = point["n_input"], point["n_target"], spec.batch
    config = build_model(point["model"], spec.preset, **spec.overrides).config
    code = official_variants()[point["model"]]
    with official_code(checkout, code.repository) as load:
        pair = build_pair(load, checkout, point["model"], config, n, m, spec.seed)
        views = synthetic_views(b, n, m, config.image_size, "cpu", seed=spec.seed)
        official, ours = pair.official_call(views), pair.our_call(views)
        extra: dict[str, Any] = {}
        with torch.no_grad():
            difference = (official() - ours()).abs().max().item()
            if code.portable:  # the tolerance holds for portable numerics; the released ones are reported
                extra = {"max_render_diff_bfloat16": difference,
                         "numerics_ours": numerics_text(pair.ours.numerics("cpu"))}
                with code.portable_context(load), pair.ours.portable_numerics():
                    difference = (official() - ours()).abs().max().item()
        flops_official, flops_ours = counted_flops(official), counted_flops(ours)

        def timed(call):
            def run():
                with torch.no_grad():
                    return call()
            return run

        times = interleaved_ms([timed(official), timed(ours)], torch.device("cpu"), spec.rounds, spec.warmup)
    ratios = [a / o for a, o in zip(*times)]
    ratio, iqr = median_iqr(ratios)
    return {"max_render_diff": difference, "gflops_official": flops_official / 1e9, "gflops_ours": flops_ours / 1e9,
            "flops_equal": flops_official == flops_ours, "image_px": config.image_size ** 2, "official_ms": median_iqr(times[0])[0],
            "ours_ms": median_iqr(times[1])[0], "ratio_official_over_ours": ratio, "ratio_iqr": iqr, "rounds": len(ratios),
            "official_extra_flops": code.extra_flops(pair.ours, n, m, b, config.image_size), **extra}


def measure_loader(spec: ParitySpec, point: Mapping[str, Any]) -> dict[str, Any]:
    checkout = Path(point["checkout"])
    with official_code(checkout, point["repository"]) as load, tempfile.TemporaryDirectory() as work:
        return loader_parity(load, checkout, point["scene"], Path(work), spec.loader_image_size, spec.loader_patch_size)


# ---------------------------------------------------------------------------------------- report


EXPLAINED = "FLOPs equal, by-design extra aside"


def _explained(row: Mapping[str, Any]) -> bool:
    """The counts agree to the FLOP once what the official forward executes by design beyond ours is taken out."""
    return abs((row["gflops_official"] - row["gflops_ours"]) * 1e9 - row["official_extra_flops"]) < 0.5


def _bfloat16_cell(row: Mapping[str, Any]) -> str:
    value = row.get("max_render_diff_bfloat16")
    if value is None or value != value:  # not a bfloat16 model, or a row of before
        return "n/a"
    return f"{value:.2g} ({row['numerics_ours']})"


def parity_report(spec: ParitySpec, rows: list[dict[str, Any]], skipped: list[str], shims: list[str]) -> Report:
    ok = ok_frame(rows)
    models = ok[ok["part"] == "model"] if not ok.empty else ok
    loaders = ok[ok["part"] == "loader"] if not ok.empty else ok
    env = rows[-1] if rows else {}
    size = ", ".join(f"{k}={v}" for k, v in spec.overrides.items())
    notes = [f"measured: {env.get('device', 'not run')}; torch {env.get('torch')}, {spec.threads} threads, float32, eval, "
             f"no_grad; commit {', '.join(sorted({str(r['commit']) for r in rows if r.get('commit')})) or 'n/a'}",
             "official code: " + (", ".join(sorted({f"{r['repository']} at {r['checkout']} (sources {r['official_sources']})"
                                                     for r in rows})) or "none given"),
             *skipped,
             f"stand-in modules for the official code: {', '.join(shims) or 'none'}"]
    model_notes = notes + [
        f"models: preset {spec.preset}" + (f" with {size}" if size else "") + f", batch {spec.batch}; weights: the official "
        f"model's own initialisation (seed {spec.seed}) perturbed, loaded into ours by models.load_official",
        "FLOPs: what torch FlopCounterMode counts of each forward as it executes (SDPA on its math kernel so that "
        "attention is counted, rays included). Column \"official extra\": what the official forward executes beyond "
        "ours by design: LVSM family, its rays rotated by a batched matmul (18 FLOPs per pixel per view; ours "
        "elementwise, which the counter does not count); LaCT, target views tokenized with 12 channels (ours reads the "
        "9 pose ones), keys, values and learning rates for target tokens (ours: queries only), and its last block's "
        "fast-weight apply and MLP on the input tokens, whose outputs nothing reads (about 2% of its forward)",
        "LaCT's renders: compared at the tolerance with the Newton-Schulz step in float32 in both (the official "
        "function with G.float() for G.bfloat16()), which is portable across CPUs; the released bfloat16 step is "
        "reported (column \"bfloat16 step\", ours with the kernel this machine chose), not held to the tolerance: "
        "bfloat16 products round differently by kernel, and the step amplifies that to about 1e-2; its latency is "
        "of the released bfloat16 step on both sides",
        f"latency: the two forwards timed in turn for {spec.rounds} rounds after {spec.warmup} untimed, each round starting "
        "with the other one; ratio = official / ours per round, median and IQR (above 1: ours is faster)",
        f"render difference: largest |official - ours| over every pixel; at most {spec.render_tolerance:g} is expected "
        "(LaCT: float32 step)",
        *failure_notes(rows, ["part", "model", "n_input", "n_target"])]
    table = [{"variant": label(r["model"]), "N": int(r["n_input"]), "M": int(r["n_target"]), "max |render diff|": r["max_render_diff"],
              f"<= {spec.render_tolerance:g}": "yes" if r["max_render_diff"] <= spec.render_tolerance else "no",
              "bfloat16 step": _bfloat16_cell(r),
              "GFLOPs official": r["gflops_official"], "GFLOPs ours": r["gflops_ours"],
              "FLOPs equal": "yes" if r["flops_equal"] else "no",
              "official - ours MFLOPs": (r["gflops_official"] - r["gflops_ours"]) * 1e3,
              "official extra MFLOPs": r["official_extra_flops"] / 1e6,
              EXPLAINED: "yes" if _explained(r) else "no",
              "official ms": r["official_ms"], "ours ms": r["ours_ms"],
              "official/ours": r["ratio_official_over_ours"], "IQR": r["ratio_iqr"], "rounds": r["rounds"]}
             for r in models.to_dict("records")]
    loader = [{"official loader": r["repository"], "scene": r["scene"], "converted by": r["converter"],
               "our source": r["our_source"], "views": f"{r['views']['context']} -> {r['views']['target']}",
               "shape ours": "x".join(map(str, r["image_shape_ours"])),
               "shape official": "x".join(map(str, r["image_shape_official"])),
               "max |image diff| (/255)": r["max_image_diff_255"], "max |K diff| px": r["max_intrinsics_diff_px"],
               "max |K diff| / fx": r["max_intrinsics_diff_rel_fx"], "max |c2w diff|": r["max_c2w_diff"],
               "max |PSNR diff| dB": r["max_psnr_diff_db"], "max |SSIM diff|": r["max_ssim_diff"]}
              for r in loaders.to_dict("records")]
    loader_notes = notes + [
        f"protocol lvsm at {spec.loader_image_size} px, patch {spec.loader_patch_size}; poses normalised over context and "
        "targets; metrics: our PSNR / SSIM and the official metric_utils on the official target views against a stand-in "
        "prediction (the targets plus N(0, 0.05) noise)"]
    report = Report(f"{spec.name}: this code beside the official code", notes)
    report.setting = preset_setting(rows, spec.preset, spec.overrides, spec.models)
    report.tables.append(Table("parity_models", "Renders, FLOPs and latency beside the official code (same weights)",
                               pd.DataFrame(table), model_notes))
    report.tables.append(Table("parity_loader", "The official data loader beside ours on one scene", pd.DataFrame(loader),
                               loader_notes))
    for row in table:
        report.headlines.append(f"{row['variant']} N={row['N']} M={row['M']}: render diff {row['max |render diff|']:.2g}, "
                                f"FLOPs equal: {row['FLOPs equal']} ({row[EXPLAINED]} with the official forward's by-design extra aside), "
                                f"official/ours latency {row['official/ours']:.2f} "
                                f"(IQR {row['IQR']:.2f})")
    for row in loader:
        report.headlines.append(f"data loader ({row['official loader']}): image diff {row['max |image diff| (/255)']:g}/255, "
                                f"intrinsics {row['max |K diff| / fx']:.1e} of fx, c2w {row['max |c2w diff|']:.1e}")
    return report


def run_parity(spec: ParitySpec, options: RunOptions) -> list[dict[str, Any]]:
    # Latency is timed in alternation on this CPU: other ranks on its cores would time each other's load.
    refuse_shared_cores(spec.name, torch.device("cpu"), allowed=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    try:
        missing = spec.missing_resources()  # before any work: a wrong folder is one line, not a failed row per point
        if missing:
            raise MissingResource(f"{spec.name}: {missing[0]}")
        given, codes = spec.given_checkouts(), official_variants()
        skipped_models = [m for m in spec.models if not given[codes[m].repository]]
        skipped = [f"skipped: {', '.join(skipped_models)} (no official checkout given: "
                   f"{' and '.join(sorted({codes[m].variable for m in skipped_models}))})"] if skipped_models else []
        if skipped:
            print(f"{spec.name}: {skipped[0]}")
        env = environment("cpu")
        digests = {repo: source_digest(Path(path)) for repo, path in given.items() if path}
        common = {"preset": spec.preset, "overrides": spec.overrides, "threads": spec.threads, "seed": spec.seed}
        points = [{"part": "model", "model": name, "repository": codes[name].repository,
                   "checkout": given[codes[name].repository], "official_sources": digests[codes[name].repository],
                   "n_input": p.n_input, "n_target": p.n_target, "batch": spec.batch, "rounds": spec.rounds, **common}
                  for name in spec.models if given[codes[name].repository] for p in spec.points]
        points += [{"part": "loader", "model": None, "repository": repo, "checkout": path, "official_sources": digests[repo],
                    "scene": spec.scene_path(), "image_size": spec.loader_image_size, "patch_size": spec.loader_patch_size}
                   for repo, path in given.items() if path and repo in LOADER_REPOSITORIES]
        return run_plan(spec, Plan(
            points, lambda p: measure_model(spec, p) if p["part"] == "model" else measure_loader(spec, p),
            lambda p: f"{p['model']} N={p['n_input']} M={p['n_target']}" if p["part"] == "model" else f"loader {p['repository']}",
            lambda rows, expected: parity_report(spec, rows, skipped, stand_ins()[1]),
            code=lambda p: (measured_by(__name__, p["model"]) if p["part"] == "model"
                            else measured_by(__name__, sources=LOADER_SOURCES)),
            context=env, manifest={"device": env["device"], "preset": spec.preset}, identity=by_config), options)
    finally:
        torch.set_num_threads(threads)


PARITY = Kind(ParitySpec, run_parity, "renders, FLOPs, latency and data loading beside the official code")
