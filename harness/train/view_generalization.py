"""Kind `view_generalization`: models trained at one number of input views, evaluated on the same
held-out scenes with N = 1, 2, ... input views (the Efficient-LVSM paper claims it generalises to
view counts not seen in training).

The models are the checkpoints a `convergence` experiment trained (`trained:` names its YAML), and
the scenes are its validation split: every scene keeps its target views for every N, and its N
context views are spread evenly in azimuth (the ring layout at the split's own phase), so at the
training N the context is exactly the validation context. Each (variant, N) is one point of the
pipeline. Variants with a KV cache are also evaluated through it, adding the views one at a time:
the same numbers as a full forward, which the table shows side by side.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from models import label, list_models, model_card, model_class

from ..errors import ConfigError, MissingResource
from ..pipeline import Plan, Report, Table, failure_notes, run_plan
from ..plots import legend_outside, plt
from ..report import measured_setting
from ..provenance import environment, measured_by
from ..runtime import autocast, resolve_device
from ..schema import ExperimentBase, Kind, ModelName, Positive, RunOptions, load_experiment
from ..weights import load_shipped, shipped_entry
from .config import ConvergenceExperiment
from .validation import score_renders

log = logging.getLogger(__name__)


class ViewGeneralizationSpec(ExperimentBase):
    kind: Literal["view_generalization"]
    trained: str = "convergence.yaml"  # the convergence experiment whose checkpoints are evaluated (relative to this file)
    models: list[ModelName] = Field(min_length=1)  # arms of the trained study, each a variant trained under its own name
    n_inputs: list[Positive] = Field(default=list(range(1, 13)), min_length=1)
    # Also evaluated by adding views one at a time (default: every variant offering an exact input cache).
    kv_cache: list[ModelName] = Field(default_factory=lambda: [name for name in list_models()
                                                               if model_class(name).offers("incremental_views")])
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


def trained_study(spec: ViewGeneralizationSpec) -> tuple[ConvergenceExperiment, Path]:
    """The convergence study `trained` names, checked to train every variant, with one seed."""
    path = Path(spec.source_file).parent / spec.trained if spec.source_file else Path(spec.trained)
    trained = load_experiment(path)
    if not isinstance(trained, ConvergenceExperiment):
        raise ConfigError(f"{spec.name}: trained: {path} is a {trained.kind} experiment, not a convergence one")
    arms = {arm.model for arm in trained.study_arms()}
    missing = [v for v in spec.models if v not in arms]
    if missing:
        raise ConfigError(f"{spec.name}: models: {missing[0]!r} is not trained by {path}")
    if len(trained.run_seeds()) != 1:
        raise ConfigError(f"{spec.name}: {path} trains several seeds; name a single-seed study")
    return trained, path


def study_weights(spec: ViewGeneralizationSpec, trained: ConvergenceExperiment, path: Path) -> dict[str, Path]:
    """Each variant's weights as the study left them; a missing file is refused in one line."""
    arms = {arm.model: arm.name for arm in trained.study_arms()}
    checkpoints = {v: trained.trained_weights(arms[v]) for v in spec.models}
    absent = [str(p) for p in checkpoints.values() if not p.is_file()]
    if absent:
        raise MissingResource(f"{spec.name}: trained weights {absent[0]} not found; train the models first "
                              f"(python -m harness run {path}, or make convergence)")
    return checkpoints


def view_points(spec: ViewGeneralizationSpec, trained: ConvergenceExperiment, checkpoints: dict[str, Path],
                shipped: dict[str, Any]) -> list[dict[str, Any]]:
    """One point per (variant, mode, N); `kv_cache` variants are measured both ways."""
    # Shipped weights are pinned by their checksum (the same in every clone), a checkpoint by its mtime.
    return [{"variant": v, "n_input": n, "mode": mode, "checkpoint": str(checkpoints[v]),
             **({"weights_sha256": shipped[v]["sha256"]} if shipped[v] else {"checkpoint_mtime": checkpoints[v].stat().st_mtime_ns}),
             "trained": trained.model_dump(mode="json")}
            for v in spec.models for mode in (("full", "kv_cache") if v in spec.kv_cache else ("full",)) for n in spec.n_inputs]


def render_views(model: torch.nn.Module, batches: list[dict[str, Any]], n: int, mode: str,
                 device: torch.device) -> tuple[list[torch.Tensor], float]:
    """Renders of each batch's targets, on the CPU, and (`kv_cache` mode, which renders through the KV
    cache, the n views added one at a time) the largest pixel difference to the full forward."""
    renders, gap = [], 0.0
    with torch.no_grad(), autocast(device, "float32"):
        for batch in batches:
            args = [batch[k].to(device) for k in ("input_images", "input_c2w", "input_fxfycxcy", "target_c2w", "target_fxfycxcy")]
            full = model(*args).cpu()
            if mode != "kv_cache":
                renders.append(full)
                continue
            h, w = args[0].shape[-2:]
            session = model.incremental(args[3], args[4], h, w)
            for k in range(n):
                session.add_views(args[0][:, k:k + 1], args[1][:, k:k + 1], args[2][:, k:k + 1])
            cached = session.render().cpu()
            gap = max(gap, float((cached - full).abs().max()))
            renders.append(cached)
    return renders, gap


class ViewMeasure:
    """Measures a (variant, N, mode) point on the study's validation scenes: each variant is loaded once,
    and each N's batches are built once."""

    def __init__(self, spec: ViewGeneralizationSpec, trained: ConvergenceExperiment, checkpoints: dict[str, Path],
                 shipped: dict[str, Any], device: torch.device):
        from .data import open_sources
        self.spec, self.trained, self.checkpoints, self.shipped, self.device = spec, trained, checkpoints, shipped, device
        self.source = open_sources(trained.data)[1]
        self.index = view_index(self.source, trained, spec.n_inputs)
        self.models: dict[str, torch.nn.Module] = {}
        self.batches_at: dict[int, list[dict[str, Any]]] = {}

    def model(self, variant: str) -> torch.nn.Module:
        from ..checkpoint import load_checkpoint
        if variant not in self.models:
            load = load_shipped if self.shipped[variant] else load_checkpoint
            self.models[variant] = load(self.checkpoints[variant], device=self.device)[0].eval()
        return self.models[variant]

    def batches(self, n: int) -> list[dict[str, Any]]:
        # Rendering a synthetic scene's views costs more than a small model's forward: every variant
        # and mode at one N reads the same batches.
        from ..data import collate, make_example
        if n not in self.batches_at:
            examples = [make_example(self.source, self.source.index_of(name), views["context"], views["target"],
                                     self.trained.data.normalize) for name, views in self.index[n].items()]
            size = self.spec.batch_size
            self.batches_at[n] = [collate(examples[i:i + size]) for i in range(0, len(examples), size)]
        return self.batches_at[n]

    def __call__(self, point: dict[str, Any]) -> dict[str, Any]:
        n, kv_cache = point["n_input"], point["mode"] == "kv_cache"
        parts = self.batches(n)
        renders, gap = render_views(self.model(point["variant"]), parts, n, point["mode"], self.device)
        return {**score_renders(zip(renders, parts)), "kv_vs_full_max_abs": gap if kv_cache else None,
                "train_n_input": self.trained.data.n_input}


def run_view_generalization(spec: ViewGeneralizationSpec, options: RunOptions) -> list[dict[str, Any]]:
    trained, trained_path = trained_study(spec)
    checkpoints = study_weights(spec, trained, trained_path)
    shipped = {v: shipped_entry(p) for v, p in checkpoints.items()}
    device = resolve_device(trained.train.device)
    return run_plan(spec, Plan(
        view_points(spec, trained, checkpoints, shipped), ViewMeasure(spec, trained, checkpoints, shipped, device),
        lambda p: f"{p['variant']} N={p['n_input']} {p['mode']}",
        lambda rows, expected: view_report(spec, trained, rows, trained.data.n_input),
        code=lambda p: measured_by(__name__, p["variant"], sources=[trained.data.source]), context=environment(device),
        manifest={"trained": trained.model_dump(mode="json")}), options)


def view_report(spec: ViewGeneralizationSpec, trained: ConvergenceExperiment, rows: list[dict[str, Any]], train_n: int) -> Report:
    ok = [r for r in rows if r["status"] == "ok"]
    frame = pd.DataFrame(ok)
    data = trained.data
    notes = [f"models: the checkpoints of {trained.name} ({trained.results_dir()}/runs), trained with N={train_n} context views",
             f"scenes: its validation split, {data.eval_scenes} held-out {data.source} scenes, {data.eval_n_target} targets each, "
             "the same targets for every N; the N context views spread evenly in azimuth (ring layout)",
             "metrics: PSNR / SSIM per view, mean over each scene's targets, then over scenes; float32",
             f"kv_cache: {', '.join(label(v) for v in spec.kv_cache if v in spec.models)} adding the N views one at a time "
             "to its KV cache, then rendering; kv_vs_full_max_abs is the largest pixel difference to the full forward"]
    if ok:
        commits = sorted({str(r.get("commit")) for r in ok})
        notes.insert(0, f"measured: {ok[0]['device']}, torch {ok[0]['torch']}, commit {', '.join(commits)}")
    notes += failure_notes(rows, ["variant", "n_input", "mode"])
    result = Report(f"{spec.name}: quality against the number of input views", notes)
    result.setting = measured_setting(ok, model={"preset": trained.preset, "image_size": data.image_size},
                                      views={"n_input": None, "n_target": data.eval_n_target},
                                      data={"source": data.source, "protocol": data.protocol, "scenes": data.eval_scenes},
                                      training={"steps": trained.train.steps, "batch": trained.train.batch_size,
                                                "seeds": trained.run_seeds()})
    if frame.empty:
        return result
    summary = pd.DataFrame({"variant": frame["variant"], "n_input": frame["n_input"], "mode": frame["mode"],
                            "psnr": frame["psnr"], "ssim": frame["ssim"], "scenes": frame["scenes"],
                            "seen_in_training": frame["n_input"] == train_n,
                            "kv_vs_full_max_abs": frame["kv_vs_full_max_abs"]})
    result.tables.append(Table("summary", f"{spec.name}: PSNR / SSIM against N (trained at N={train_n})", summary, notes, console=False))
    wide = summary[summary["mode"] == "full"].pivot(index="n_input", columns="variant", values="psnr")
    wide = wide[[v for v in spec.models if v in wide.columns]].rename(columns=label)
    for variant in spec.kv_cache:
        cached = summary[(summary["mode"] == "kv_cache") & (summary["variant"] == variant)].set_index("n_input")["psnr"]
        if not cached.empty:
            wide[f"{label(variant)} (KV cache, views added one at a time)"] = cached
    wide = wide.reset_index().rename(columns={"n_input": "N"})
    wide["N"] = [f"{n} (training N)" if n == train_n else str(n) for n in wide["N"]]
    result.tables.append(Table("psnr_by_n", f"PSNR (dB) against the number of input views; trained at N={train_n}", wide, notes,
                               columns={"N": {"role": "setting"}, **{str(c): {"quantity": "psnr"} for c in wide.columns if c != "N"}}))
    where = f"{ok[0]['device']}, float32; preset {trained.preset}, {data.image_size} px; {data.source}"
    result.figures["psnr_vs_n.png"] = lambda: psnr_figure(summary, spec, train_n, where)
    for variant in spec.models:
        part = summary[(summary["variant"] == variant) & (summary["mode"] == "full")].set_index("n_input")["psnr"]
        if train_n in part.index and len(part) > 1:
            beyond = part[part.index > train_n]
            if not beyond.empty:
                drop = part[train_n] - beyond.min()
                verdict = f"drops by up to {drop:.2f} dB past it" if drop > 0.1 else "stays within 0.1 dB of it or above past it"
                result.headlines.append(f"{label(variant)}: PSNR {part[train_n]:.2f} dB at the training N={train_n}, "
                                        f"{beyond.iloc[-1]:.2f} dB at N={beyond.index[-1]} ({verdict})")
    return result


def psnr_figure(summary: pd.DataFrame, spec: ViewGeneralizationSpec, train_n: int, where: str = ""):
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for variant in spec.models:
        part = summary[(summary["variant"] == variant) & (summary["mode"] == "full")].sort_values("n_input")
        ax.plot(part["n_input"], part["psnr"], marker="o", color=model_card(variant).color, label=label(variant))
        cached = summary[(summary["variant"] == variant) & (summary["mode"] == "kv_cache")].sort_values("n_input")
        if not cached.empty:
            ax.plot(cached["n_input"], cached["psnr"], marker="x", linestyle="--", color=model_card(variant).color,
                    label=f"{label(variant)}, KV cache (views added one at a time)")
    ax.axvline(train_n, color="gray", linestyle=":", label=f"training N = {train_n}")
    ax.set_xlabel("N input views at test time")
    ax.set_ylabel("PSNR (dB), held-out scenes")
    ax.set_xticks(sorted(summary["n_input"].unique()))
    ax.set_title(f"PSNR against N, trained at N = {train_n}" + (f"\n{where}" if where else ""), fontsize=8)
    ax.grid(alpha=0.3)
    legend_outside(ax)
    return fig


VIEW_GENERALIZATION = Kind(ViewGeneralizationSpec, run_view_generalization,
                           "trained models evaluated with more or fewer input views than they were trained with")
