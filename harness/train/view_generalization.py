"""Kind `view_generalization`: models trained at one number of input views, evaluated on the same
held-out scenes with N = 1, 2, ... input views (the Efficient-LVSM paper claims it generalises to
view counts not seen in training).

The models are the checkpoints a `convergence` experiment trained (`trained:` names its YAML), and
the scenes are its validation split: every scene keeps its target views for every N, and its N
context views are spread evenly in azimuth (the ring layout at the split's own phase), so at the
training N the context is exactly the validation context. Each (variant, N) is one point of the
pipeline. Variants with a KV cache are also evaluated through it, adding the views one at a time:
the same numbers as a full forward, which the table shows side by side.

The models are the study's arms (a variant, or a variant with overrides such as its camera encoding),
each seed it trained; tables give the mean over seeds and their range. Arms named in `rigid` are also
rendered at the training N with every camera (and so the scene) moved by one rigid transform: a model
whose cameras enter only relative to each other (PRoPE, GTA) renders the same pixels.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from models import label, model_class
from models.rays import random_rigid_transform

from ..checkpoint import load_checkpoint, read_torch_file
from ..errors import ConfigError, MissingResource
from ..pipeline import Plan, Report, Table, failure_notes, run_plan
from ..plots import legend_outside, plt
from ..report import measured_setting
from ..provenance import devices_of, environment, measured_by
from ..runtime import autocast, resolve_device
from ..schema import ExperimentBase, Kind, NonNegative, Positive, RunOptions, load_experiment
from ..weights import load_shipped, shipped_entry
from .config import ConvergenceExperiment
from .figures import arm_colors
from .validation import score_renders

log = logging.getLogger(__name__)


class ViewGeneralizationSpec(ExperimentBase):
    kind: Literal["view_generalization"]
    trained: str = "convergence.yaml"  # the convergence experiment whose checkpoints are evaluated (relative to this file)
    models: list[str] = Field(min_length=1)  # arms of the trained study (an arm named as its variant is that variant)
    seeds: list[NonNegative] = []  # the trained study's seeds evaluated; empty: every seed it trains
    n_inputs: list[Positive] = Field(default=list(range(1, 13)), min_length=1)
    # Arms also evaluated by adding views one at a time; default: every arm whose variant offers an exact input cache.
    kv_cache: list[str] | None = None
    # Arms also rendered at the training N with every camera moved by one rigid transform (drawn from `rigid_seed`).
    rigid: list[str] = []
    rigid_seed: NonNegative = 0
    batch_size: Positive = 8


def ring_context(azimuth: torch.Tensor, n: int, phase: float, exclude: list[int]) -> list[int]:
    """The camera nearest each of n angles 360/n degrees apart from `phase`, never an excluded view."""
    chosen: list[int] = []
    for k in range(n):
        gap = torch.remainder(azimuth - (phase + 2 * np.pi * k / n) + np.pi, 2 * np.pi) - np.pi
        gap[chosen + exclude] = float("inf")
        chosen.append(int(gap.abs().argmin()))
    return sorted(chosen)


def view_index(source, trained: ConvergenceExperiment, n_inputs: list[int]) -> dict[int, dict[str, dict[str, list[int]]]]:
    """N -> scene -> {context, target}: the training study's validation targets, N ring context views."""
    from .data import camera_centres, evaluation_index, ring_views
    data = trained.data
    if data.context_layout != "ring":
        raise ConfigError(f"view_generalization: the trained study {trained.name} uses context_layout "
                          f"{data.context_layout!r}; this study needs the ring layout")
    base = dict(list(evaluation_index(source, data).items())[:data.eval_scenes])
    out: dict[int, dict[str, dict[str, list[int]]]] = {n: {} for n in n_inputs}
    for i, name in enumerate(source.names):
        if name not in base:
            continue
        rng = np.random.default_rng([data.seed, i])
        phase = rng.uniform(0, 2 * np.pi)  # the draw ring_views makes first: the validation split's phase
        centres = camera_centres(source, i).double()
        azimuth = torch.atan2(centres[:, 0], centres[:, 2])
        target = base[name]["target"]
        for n in n_inputs:
            if n + len(target) > len(centres):
                raise ConfigError(f"view_generalization: N={n} needs {n + len(target)} views per scene; the source has {len(centres)}")
            out[n][name] = {"context": ring_context(azimuth, n, phase, target), "target": target}
        check = ring_views(source, i, data.eval_n_input or data.n_input, data.eval_n_target,
                           np.random.default_rng([data.seed, i]))[0]
        assert check == base[name]["context"]  # the split is reproduced (same rule, same draws)
    return out


class TrainedStudy:
    """The convergence study `trained` names: its arms (checked to include every arm asked for), their
    variants, the seeds evaluated and where each (arm, seed) left its weights."""

    def __init__(self, spec: ViewGeneralizationSpec):
        path = Path(spec.source_file).parent / spec.trained if spec.source_file else Path(spec.trained)
        study = load_experiment(path)
        if not isinstance(study, ConvergenceExperiment):
            raise ConfigError(f"{spec.name}: trained: {path} is a {study.kind} experiment, not a convergence one")
        self.path, self.study = path, study
        self.variant = {arm.name: arm.model for arm in study.study_arms()}
        self.overrides = {arm.name: arm.overrides for arm in study.study_arms()}
        for field, names in (("models", spec.models), ("kv_cache", spec.kv_cache or []), ("rigid", spec.rigid)):
            unknown = [a for a in names if a not in self.variant or a not in spec.models]
            if unknown:
                raise ConfigError(f"{spec.name}: {field}: {unknown[0]!r} is not an arm of {path} named in models; "
                                  f"its arms: {', '.join(self.variant)}")
        self.seeds = spec.seeds or study.run_seeds()
        strange = [s for s in self.seeds if s not in study.run_seeds()]
        if strange:
            raise ConfigError(f"{spec.name}: seeds: {strange[0]} is not trained by {path} (seeds {study.run_seeds()})")
        self.kv_cache = spec.kv_cache if spec.kv_cache is not None else [
            a for a in spec.models if model_class(self.variant[a]).offers("incremental_views")]

    def weights(self, arm: str, seed: int) -> Path:
        """The shipped file for the first seed of a study that ships its weights, else the run's checkpoint."""
        if seed == self.study.run_seeds()[0]:
            return self.study.trained_weights(arm)
        return self.study.run_dir(arm, seed) / "checkpoint.pt"

    def label(self, arm: str) -> str:
        """The variant's label, with the overrides the arm trains it with (its name where it has none)."""
        if arm == self.variant[arm]:
            return label(arm)
        changes = ", ".join(f"{key}: {value}" for key, value in self.overrides[arm].items())
        return f"{label(self.variant[arm])} ({changes})" if changes else arm


def view_points(spec: ViewGeneralizationSpec, trained: TrainedStudy, from_records: bool
                ) -> tuple[list[dict[str, Any]], dict[tuple[str, int], str]]:
    """One point per (arm, seed, mode, N): `kv_cache` arms are measured both ways, `rigid` arms also with
    the world moved (at the training N); and each (arm, seed) whose weights are not there yet, with why.
    A study of several seeds names the seed in its points."""
    study, points, absent = trained.study, [], {}
    train_n = study.data.n_input
    for arm in spec.models:
        for seed in trained.seeds:
            weights = trained.weights(arm, seed)
            shipped = shipped_entry(weights)
            if not (weights.is_file() or from_records):
                absent[arm, seed] = (f"{trained.label(arm)} seed {seed}: no weights at {weights} yet (train them: "
                                     f"python -m harness run {trained.path})")
                continue
            step = (shipped["step"] if shipped else read_torch_file(weights).get("step", 0)) if weights.is_file() else None
            if step is not None and step < study.train.steps:  # a run still training leaves its latest checkpoint
                absent[arm, seed] = (f"{trained.label(arm)} seed {seed}: {weights} is at step {step} of {study.train.steps} "
                                     f"(finish training: python -m harness run {trained.path})")
                continue
            # Shipped weights are pinned by their checksum (the same in every clone), a checkpoint by its mtime.
            pin = ({"weights_sha256": shipped["sha256"]} if shipped else
                   {"checkpoint_mtime": weights.stat().st_mtime_ns} if weights.is_file() else {})
            modes = [(mode, n) for mode in (("full", "kv_cache") if arm in trained.kv_cache else ("full",)) for n in spec.n_inputs]
            modes += [("rigid", train_n)] if arm in spec.rigid else []
            points += [{"arm": arm, **({"seed": seed} if study.seeds else {}), "n_input": n, "mode": mode,
                        "checkpoint": str(weights), **pin, "trained": study.model_dump(mode="json")} for mode, n in modes]
    return points, absent


def identity(point: dict[str, Any]) -> dict[str, Any]:
    """A measurement rebuilt from records is found without its checkpoint's mtime: a fresh clone has no checkpoint."""
    return {k: v for k, v in point.items() if k != "checkpoint_mtime"}


def render_views(model: torch.nn.Module, batches: list[dict[str, Any]], n: int, mode: str, device: torch.device,
                 move: torch.Tensor) -> tuple[list[torch.Tensor], float]:
    """Renders of each batch's targets, on the CPU, and the largest pixel difference to the full forward of
    the renders of its mode: `kv_cache` renders through the KV cache (the n views added one at a time),
    `rigid` with every camera moved by `move` (a rigid transform of the world)."""
    renders, gap = [], 0.0
    with torch.no_grad(), autocast(device, "float32"):
        for batch in batches:
            args = [batch[k].to(device) for k in ("input_images", "input_c2w", "input_fxfycxcy", "target_c2w", "target_fxfycxcy")]
            full = model(*args).cpu()
            if mode == "full":
                renders.append(full)
                continue
            if mode == "kv_cache":
                h, w = args[0].shape[-2:]
                session = model.incremental(args[3], args[4], h, w)
                for k in range(n):
                    session.add_views(args[0][:, k:k + 1], args[1][:, k:k + 1], args[2][:, k:k + 1])
                other = session.render().cpu()
            else:
                moved = move.to(device=device, dtype=args[1].dtype)
                other = model(args[0], moved @ args[1], args[2], moved @ args[3], args[4]).cpu()
            gap = max(gap, float((other - full).abs().max()))
            renders.append(other)
    return renders, gap


class ViewMeasure:
    """Measures a point on the study's validation scenes: each checkpoint is loaded once, and each N's
    batches are built once."""

    def __init__(self, spec: ViewGeneralizationSpec, trained: TrainedStudy, device: torch.device):
        from .data import open_sources
        self.spec, self.trained, self.device = spec, trained, device
        self.source = open_sources(trained.study.data)[1]
        self.index = view_index(self.source, trained.study, sorted({*spec.n_inputs, trained.study.data.n_input}))
        self.models: dict[str, torch.nn.Module] = {}
        self.batches_at: dict[int, list[dict[str, Any]]] = {}
        self.move = random_rigid_transform(spec.rigid_seed)

    def model(self, checkpoint: str) -> torch.nn.Module:
        if checkpoint not in self.models:
            load = load_shipped if shipped_entry(Path(checkpoint)) else load_checkpoint
            self.models[checkpoint] = load(Path(checkpoint), device=self.device)[0].eval()
        return self.models[checkpoint]

    def batches(self, n: int) -> list[dict[str, Any]]:
        # Rendering a synthetic scene's views costs more than a small model's forward: every arm and
        # mode at one N reads the same batches.
        from ..data import collate, make_example
        if n not in self.batches_at:
            examples = [make_example(self.source, self.source.index_of(name), views["context"], views["target"],
                                     self.trained.study.data.normalize) for name, views in self.index[n].items()]
            size = self.spec.batch_size
            self.batches_at[n] = [collate(examples[i:i + size]) for i in range(0, len(examples), size)]
        return self.batches_at[n]

    def __call__(self, point: dict[str, Any]) -> dict[str, Any]:
        n, mode = point["n_input"], point["mode"]
        parts = self.batches(n)
        model = self.model(point["checkpoint"])
        renders, gap = render_views(model, parts, n, mode, self.device, self.move)
        return {**score_renders(zip(renders, parts)), "kv_vs_full_max_abs": gap if mode == "kv_cache" else None,
                "moved_vs_full_max_abs": gap if mode == "rigid" else None, "train_n_input": self.trained.study.data.n_input,
                **({"numerics": numerics} if (numerics := model.numerics(self.device)) else {})}


def point_label(point: dict[str, Any]) -> str:
    seed = f" seed {point['seed']}" if "seed" in point else ""
    return f"{point['arm']}{seed} N={point['n_input']} {point['mode']}"


def run_view_generalization(spec: ViewGeneralizationSpec, options: RunOptions) -> list[dict[str, Any]]:
    trained = TrainedStudy(spec)
    points, absent = view_points(spec, trained, options.from_records)
    if not points:
        raise MissingResource(f"{spec.name}: no trained weights found: {next(iter(absent.values()))}")
    device = resolve_device(trained.study.train.device)
    return run_plan(spec, Plan(
        points, ViewMeasure(spec, trained, device),
        point_label,
        lambda rows, expected: view_report(spec, trained, rows, absent),
        code=lambda p: measured_by(__name__, trained.variant[p["arm"]], sources=[trained.study.data.source]),
        context=environment(device), manifest={"trained": trained.study.model_dump(mode="json")}, identity=identity), options)


def view_report(spec: ViewGeneralizationSpec, trained: TrainedStudy, rows: list[dict[str, Any]],
                absent: dict[tuple[str, int], str]) -> Report:
    study, data = trained.study, trained.study.data
    train_n = data.n_input
    ok = [r for r in rows if r["status"] == "ok"]
    frame = pd.DataFrame(ok)
    seeds = (f"seeds {', '.join(map(str, trained.seeds))}, the mean over them (range: max - min)" if study.seeds
             else f"seed {trained.seeds[0]}")
    notes = [f"models: the checkpoints of {study.name} ({study.results_dir()}/runs), trained with N={train_n} context views; {seeds}",
             f"scenes: its validation split, {data.eval_scenes} held-out {data.source} scenes, {data.eval_n_target} targets each, "
             "the same targets for every N; the N context views spread evenly in azimuth (ring layout)",
             "metrics: PSNR / SSIM per view, mean over each scene's targets, then over scenes; float32"]
    cached = [a for a in trained.kv_cache if a in spec.models]
    if cached:
        notes.append(f"kv_cache: {', '.join(map(trained.label, cached))} adding the N views one at a time to its KV cache, "
                     "then rendering; kv_vs_full_max_abs is the largest pixel difference to the full forward")
    if spec.rigid:
        notes.append(f"rigid: at the training N, every camera (and so the scene) moved by one rigid transform (rotation and "
                     f"translation drawn from seed {spec.rigid_seed}); moved_vs_full_max_abs is the largest pixel change")
    if ok:
        commits = ", ".join(sorted({str(r.get("commit")) for r in ok}))
        notes.insert(0, f"measured: {devices_of(ok)}, torch {ok[0]['torch']}, commit {commits}")
    notes += failure_notes(rows, ["arm", "seed", "n_input", "mode"])
    result = Report(f"{spec.name}: quality against the number of input views", notes)
    # A rebuild from records knows no weights: an (arm, seed) without rows is named all the same.
    measured = {(r["arm"], r.get("seed", trained.seeds[0])) for r in ok}
    result.not_run = [absent.get((arm, seed)) or f"{trained.label(arm)} seed {seed}: no recorded rows (run it once its weights exist)"
                      for arm in spec.models for seed in trained.seeds if (arm, seed) not in measured]
    result.setting = measured_setting(ok, model={"preset": study.preset, "image_size": data.image_size},
                                      views={"n_input": None, "n_target": data.eval_n_target},
                                      data={"source": data.source, "protocol": data.protocol, "scenes": data.eval_scenes},
                                      training={"steps": study.train.steps, "batch": study.train.batch_size, "seeds": trained.seeds})
    if frame.empty:
        return result
    frame["arm"] = frame["arm"].map(trained.label)
    for column in ("kv_vs_full_max_abs", "moved_vs_full_max_abs"):  # rows recorded before a mode existed lack its column
        frame[column] = frame.get(column)
    arms = [trained.label(a) for a in spec.models if trained.label(a) in set(frame["arm"])]
    summary = (frame.groupby(["arm", "n_input", "mode"], sort=False)
               .agg(psnr=("psnr", "mean"), psnr_range=("psnr", lambda x: x.max() - x.min()), ssim=("ssim", "mean"),
                    seeds=("psnr", "size"), scenes=("scenes", "first"),
                    kv_vs_full_max_abs=("kv_vs_full_max_abs", "max"), moved_vs_full_max_abs=("moved_vs_full_max_abs", "max"))
               .reset_index())
    summary["seen_in_training"] = summary["n_input"] == train_n
    result.tables.append(Table("summary", f"{spec.name}: PSNR / SSIM against N (trained at N={train_n})",
                               summary.drop(columns=[] if study.seeds else ["psnr_range", "seeds"]), notes, console=False))
    sweep = summary[summary["mode"] != "rigid"]
    wide = sweep[sweep["mode"] == "full"].pivot(index="n_input", columns="arm", values="psnr")
    wide = wide[[a for a in arms if a in wide.columns]]
    for arm in arms:
        through_cache = sweep[(sweep["mode"] == "kv_cache") & (sweep["arm"] == arm)].set_index("n_input")["psnr"]
        if not through_cache.empty:
            wide[f"{arm} (KV cache, views added one at a time)"] = through_cache
    wide = wide.reset_index().rename(columns={"n_input": "N"})
    wide["N"] = [f"{n} (training N)" if n == train_n else str(n) for n in wide["N"]]
    result.tables.append(Table("psnr_by_n", f"PSNR (dB) against the number of input views; trained at N={train_n}", wide, notes,
                               columns={"N": {"role": "setting"}, **{str(c): {"quantity": "psnr"} for c in wide.columns if c != "N"}}))
    if spec.rigid:
        result.tables.append(rigid_table(summary, train_n, notes))
    where = f"{devices_of(ok)}, float32; preset {study.preset}, {data.image_size} px; {data.source}"
    colors = {trained.label(a): color for a, color in arm_colors({a: trained.variant[a] for a in spec.models}).items()}
    result.figures["psnr_vs_n.png"] = lambda: psnr_figure(sweep, arms, colors, train_n, where)
    for arm in arms:
        part = sweep[(sweep["arm"] == arm) & (sweep["mode"] == "full")].set_index("n_input")["psnr"]
        beyond = part[part.index > train_n]
        if train_n in part.index and not beyond.empty:
            drop = part[train_n] - beyond.min()
            verdict = f"drops by up to {drop:.2f} dB past it" if drop > 0.1 else "stays within 0.1 dB of it or above past it"
            result.headlines.append(f"{arm}: PSNR {part[train_n]:.2f} dB at the training N={train_n}, "
                                    f"{beyond.iloc[-1]:.2f} dB at N={beyond.index[-1]} ({verdict})")
    return result


INVARIANT_MAX_ABS = 1e-4  # the rigid-move tests' bound: float32 rounding through a few layers stays far below it


def rigid_table(summary: pd.DataFrame, train_n: int, notes: list[str]) -> Table:
    """Per arm: PSNR as trained and with the world moved, the largest pixel change, and whether it is invariant."""
    moved = summary[summary["mode"] == "rigid"].set_index("arm")
    still = summary[(summary["mode"] == "full") & (summary["n_input"] == train_n)].set_index("arm")["psnr"]
    table = pd.DataFrame({"arm": moved.index, "psnr": [still.get(a, float("nan")) for a in moved.index],
                          "psnr_moved": moved["psnr"].to_numpy(), "max_abs_change": moved["moved_vs_full_max_abs"].to_numpy()})
    table["psnr_change_db"] = table["psnr_moved"] - table["psnr"]
    table["invariant"] = ["yes" if change <= INVARIANT_MAX_ABS else "no" for change in table["max_abs_change"]]
    return Table("rigid", f"Renders with every camera moved by one rigid transform (N={train_n}): invariant when the "
                          f"largest pixel change is at most {INVARIANT_MAX_ABS:g}", table, notes,
                 columns={"arm": {"role": "label"}, "psnr": {"quantity": "psnr"}, "psnr_moved": {"quantity": "psnr"}})


def psnr_figure(sweep: pd.DataFrame, arms: list[str], colors: dict[str, Any], train_n: int, where: str = ""):
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for arm in arms:
        part = sweep[(sweep["arm"] == arm) & (sweep["mode"] == "full")].sort_values("n_input")
        ax.plot(part["n_input"], part["psnr"], marker="o", color=colors[arm], label=arm)
        cached = sweep[(sweep["arm"] == arm) & (sweep["mode"] == "kv_cache")].sort_values("n_input")
        if not cached.empty:
            ax.plot(cached["n_input"], cached["psnr"], marker="x", linestyle="--", color=colors[arm],
                    label=f"{arm}, KV cache (views added one at a time)")
    ax.axvline(train_n, color="gray", linestyle=":", label=f"training N = {train_n}")
    ax.set_xlabel("N input views at test time")
    ax.set_ylabel("PSNR (dB), held-out scenes")
    ax.set_xticks(sorted(sweep["n_input"].unique()))
    ax.set_title(f"PSNR against N, trained at N = {train_n}" + (f"\n{where}" if where else ""), fontsize=8)
    ax.grid(alpha=0.3)
    legend_outside(ax)
    return fig


VIEW_GENERALIZATION = Kind(ViewGeneralizationSpec, run_view_generalization,
                           "trained models evaluated with more or fewer input views than they were trained with")
