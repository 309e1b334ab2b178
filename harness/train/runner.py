"""Experiment kinds `train` (one model) and `convergence` (several variants, one budget), on the
shared pipeline: each trained variant is one point of `rows.jsonl` (its final validation, pose-swap
drop and timing), and so are the camera-ignoring predictors every variant must beat. A point trains
in `runs/<variant>/` (checkpoint and training log), so an interrupted run resumes mid-training.

Both run as one process or under `torchrun` (every rank trains; rank 0 records and writes)."""
from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from models import label, model_card

from ..pipeline import Report, Sweep, Table, write_manifest, write_report
from ..plots import plt
from ..records import write_atomic
from ..schema import Kind, RunOptions, revalidate
from .config import Arm, ConvergenceExperiment, TrainExperiment, settings_dict
from .distributed import close_world, init_world
from .loop import RunResult, read_log, train_model
from .validation import pose_swap_drop, trivial_baselines

log = logging.getLogger(__name__)
SUMMARY_COLUMNS = ["variant", "steps", "seconds", "final_psnr", "final_ssim", "best_trivial_psnr", "pose_swap_drop_db"]


def save_renders(path: Path, result: RunResult, examples: int = 6) -> None:
    """PNG, one row per validation example: context views | ground-truth targets | renders."""
    import torch
    from PIL import Image

    from .validation import model_predictor
    batch = {k: v[:examples] for k, v in result.eval_split.batches[0].items()}
    result.model.eval()
    renders = model_predictor(result.model, result.device, result.dtype)(batch).float().cpu()
    rows = [torch.cat([*batch["input_images"][i], *batch["target_images"][i], *renders[i]], dim=2)
            for i in range(renders.shape[0])]
    grid = (torch.cat(rows, dim=1).clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    image = Image.fromarray(grid)
    image = image.resize((image.width * 3, image.height * 3), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())


def final_columns(result: RunResult) -> dict[str, Any]:
    final = [r for r in result.validation if r["step"] == result.step]
    if not final:
        raise RuntimeError(f"no validation row at the final step {result.step}")
    swap = pose_swap_drop(result.model, result.eval_split, result.device, result.dtype)
    return {"steps": result.step, "seconds": result.train_seconds, "final_psnr": final[-1]["psnr"],
            "final_ssim": final[-1]["ssim"], "pose_swap_drop_db": swap["pose_swap_drop_db"],
            "swapped_psnr": swap["swapped_psnr"], "params": result.model.num_parameters(), "loss": result.loss,
            "loss_note": result.loss_note, "dtype": result.dtype, **result.environment}


# ------------------------------------------------------------------------------------ convergence


def first_reach(curve: pd.DataFrame, threshold: float) -> tuple[float | None, float | None]:
    """(step, seconds) of the first validation strictly above `threshold`, or (None, None)."""
    above = curve[curve["psnr"] > threshold]
    if above.empty:
        return None, None
    row = above.iloc[0]
    return int(row["step"]), float(row["seconds"])


def curve(run_dir: Path) -> pd.DataFrame | None:
    rows = [r for r in read_log(run_dir) if r.get("kind") == "val"]
    return pd.DataFrame(rows)[["step", "seconds", "psnr", "ssim"]].sort_values("step") if rows else None


def arm_colors(arms: dict[str, str]) -> dict[str, Any]:
    """arm -> variant: a colour per arm, the variant's card colour when every arm is a different variant
    (so the convergence plots match the profiling ones), else a palette."""
    if len(set(arms.values())) == len(arms):
        return {arm: model_card(variant).color for arm, variant in arms.items()}
    cmap = plt.get_cmap("tab10" if len(arms) <= 10 else "tab20")
    return {arm: cmap(i % cmap.N) for i, arm in enumerate(arms)}


def curves_figure(runs: list[dict[str, Any]], colors: dict[str, Any], trivial: float | None, axis: str, xlabel: str):
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    first_seed = {}
    for run in runs:
        if run["curve"] is None:
            continue
        first = first_seed.setdefault(run["arm"], run["seed"]) == run["seed"]
        ax.plot(run["curve"][axis], run["curve"]["psnr"], marker="." if first else None, linewidth=1.4 if first else 0.8,
                linestyle="-" if first else "--", color=colors[run["arm"]], label=run["label"] if first else None)
    if trivial is not None:
        ax.axhline(trivial, color="gray", linestyle=":", linewidth=1, label="best camera-ignoring predictor")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation PSNR (dB)")
    ax.set_title("validation PSNR per arm (dashed: further seeds); dotted: camera-ignoring bar", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def per_arm_figure(summary: pd.DataFrame, colors: dict[str, Any], trivial: float | None, reference: str):
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(summary) + 1.5))
    for i, row in enumerate(summary.itertuples()):
        low, high = row.psnr_mean - row.psnr_min, row.psnr_max - row.psnr_mean
        ax.errorbar(row.psnr_mean, i, xerr=[[low], [high]], fmt="o", color=colors[row.arm], capsize=4)
    if trivial is not None:
        ax.axvline(trivial, color="gray", linestyle=":", label="best camera-ignoring predictor")
    if reference in set(summary["arm"]):
        ax.axvline(float(summary.set_index("arm").loc[reference, "psnr_mean"]), color="black", linewidth=0.8, linestyle="--",
                   label=f"reference: {reference}")
    ax.set_yticks(range(len(summary)), [f"{a} ({s} seed{'s' if s > 1 else ''})" for a, s in zip(summary["arm"], summary["seeds"])],
                  fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("final validation PSNR (dB): mean, bars = seed range")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7, loc="lower right")
    return fig


def pareto(costs: list[float], quality: list[float]) -> list[int]:
    """Indices of the points no other point beats on both cost (lower) and quality (higher), by cost."""
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -quality[i]))
    front, best = [], float("-inf")
    for i in order:
        if quality[i] > best:
            front.append(i)
            best = quality[i]
    return front


def cost_figure(summary: pd.DataFrame, colors: dict[str, Any], device: str):
    columns = [("gflops", "forward GFLOPs (N=2, M=1)"), ("latency_ms", f"latency ms (N=2, M=1; {device})")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
    for ax, (column, xlabel) in zip(axes, columns):
        part = summary.dropna(subset=[column, "psnr_mean"])
        costs, quality = [float(v) for v in part[column]], [float(v) for v in part["psnr_mean"]]
        for row, x, y in zip(part.itertuples(), costs, quality):
            ax.scatter(x, y, color=colors[row.arm], s=40, zorder=3)
            ax.annotate(row.arm, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
        front = pareto(costs, quality)
        if front:
            ax.plot([costs[i] for i in front], [quality[i] for i in front], color="black", linewidth=1, linestyle="--",
                    label="Pareto front", zorder=2)
            ax.legend(fontsize=7)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("final validation PSNR (dB, mean over seeds)")
        ax.grid(alpha=0.3)
    fig.suptitle("quality against cost", fontsize=9)
    return fig


def provenance(rows: list[dict[str, Any]], exp) -> list[str]:
    if not rows:
        return []
    env, data = rows[-1], exp.data
    commits = ", ".join(sorted({str(r["commit"]) for r in rows}))
    return [f"measured: {env['device']}, dtype {env['dtype']}, torch {env['torch']}, commit {commits}",
            f"data: {data.source} {json.dumps(data.options)} at {data.image_size}px, {data.n_input} context + "
            f"{data.n_target} target views per training example; validation: {data.eval_scenes} scenes "
            f"{json.dumps({**data.options, **data.eval_options})}, {data.eval_n_target} targets each",
            f"loss: {env['loss']}" + (f" ({env['loss_note']})" if env.get("loss_note") else "")]


def _mean(values) -> float | None:
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


def convergence_report(exp: ConvergenceExperiment, finals: list[dict[str, Any]], trivial: dict[str, dict[str, float]],
                       costs: dict[str, dict[str, Any]], run_dirs: dict[tuple[str, int], Path]) -> tuple[Report, pd.DataFrame]:
    best_trivial = max(v["psnr"] for v in trivial.values()) if trivial else None
    arms = {arm.name: arm for arm in exp.study_arms()}
    colors = arm_colors({name: arm.model for name, arm in arms.items()})
    runs, rows = [], []
    for final in finals:
        arm, seed = final["arm"], final["seed"]
        run_curve = curve(run_dirs[arm, seed])
        runs.append({"arm": arm, "seed": seed, "label": arm, "curve": run_curve})
        row = {"arm": arm, "variant": final["model"], "seed": seed, "steps": final["steps"], "seconds": round(final["seconds"], 1),
               "final_psnr": final["final_psnr"], "final_ssim": final["final_ssim"], "best_trivial_psnr": best_trivial,
               "pose_swap_drop_db": final["pose_swap_drop_db"], "swapped_psnr": final["swapped_psnr"],
               "above_trivial_db": None if best_trivial is None else final["final_psnr"] - best_trivial,
               "params": final["params"], "loss": final["loss"]}
        for threshold in ([best_trivial] if best_trivial is not None else []) + list(exp.reach_psnr):
            name = "trivial" if threshold == best_trivial else f"{threshold:g}dB"
            step, seconds = first_reach(run_curve, threshold) if run_curve is not None else (None, None)
            row[f"steps_to_{name}"], row[f"seconds_to_{name}"] = step, None if seconds is None else round(seconds, 1)
        rows.append(row)
    final_table = pd.DataFrame(rows)
    summary = arm_summary(exp, final_table, costs, best_trivial)
    notes = provenance(finals, exp) + [
        f"seeds: model initialisation {exp.run_seeds()} (data order and validation split are the same for every seed)",
        "LPIPS: n/a (validation scores PSNR and SSIM; the VGG backbone cannot be downloaded here)",
        f"cost: parameters, forward GFLOPs (FlopCounterMode, 2 x MAC incl. attention) and latency at N={exp.cost.n_input}, "
        f"M={exp.cost.n_target} at each arm's trained size, {exp.cost.threads} thread(s), median of {exp.cost.runs} runs",
    ] + ([f"scale: {exp.scale_note}"] if exp.scale_note else [])
    report = Report(f"{exp.name}: final validation quality per arm (same data, steps, batch)", notes)
    report.tables.append(Table("summary", f"{exp.name}: one row per arm", summary, notes + [
        "diff_vs_reference_db: mean PSNR minus the reference arm's; `not significant` when smaller than the larger "
        "seed range (max - min) of the two arms"]))
    report.tables.append(Table("final", f"{exp.name}: one row per trained run", final_table, notes + [
        "steps_to_trivial: first validation step above best_trivial_psnr; "
        "seconds count training steps only (no validation, no checkpoints)"], console=False))
    trivial_frame = pd.DataFrame([{"predictor": k, "psnr": v["psnr"], "ssim": v["ssim"], "blur_sigma_px": v.get("sigma")}
                                  for k, v in trivial.items()])
    report.tables.append(Table("trivial_predictors", "Predictors that ignore the target camera's view content, on the same "
                               "validation split", trivial_frame, notes[:2] + [
                                   "blurred_mean: the context mean blurred with the Gaussian sigma (pixels) that scores best here"]))
    for row in summary.itertuples() if not summary.empty else ():
        line = (f"{row.arm}: PSNR {row.psnr_mean:.2f} dB" + (f" (seeds {row.psnr_min:.2f} to {row.psnr_max:.2f})" if row.seeds > 1 else "")
                + (f", {row.min_above_trivial_db:+.2f} dB vs the camera-ignoring bar" if row.min_above_trivial_db is not None else ""))
        if row.diff_vs_reference_db is not None and row.diff_vs_reference_db == row.diff_vs_reference_db:
            line += f", {row.diff_vs_reference_db:+.2f} dB vs {exp.reference} ({row.significance})"
        if row.published is not None and row.published == row.published:
            line += f"; published {row.published} ({row.published_source})"
        report.headlines.append(line)
    device = finals[-1]["device"] if finals else ""
    report.figures["psnr_vs_step.png"] = lambda: curves_figure(runs, colors, best_trivial, "step", "optimizer steps")
    report.figures["psnr_vs_seconds.png"] = lambda: curves_figure(runs, colors, best_trivial, "seconds", "training wall-clock seconds")
    if not summary.empty:
        report.figures["psnr_per_arm.png"] = lambda: per_arm_figure(summary, colors, best_trivial, exp.reference)
        if summary["gflops"].notna().any():
            report.figures["quality_vs_cost.png"] = lambda: cost_figure(summary, colors, device)
    return report, summary


def arm_summary(exp: ConvergenceExperiment, final_table: pd.DataFrame, costs: dict[str, dict[str, Any]],
                best_trivial: float | None) -> pd.DataFrame:
    """One row per arm: mean and range over seeds, cost, the bar, the difference to the reference arm."""
    if final_table.empty:
        return pd.DataFrame()
    groups = {arm: part for arm, part in final_table.groupby("arm", sort=False)}
    spread = {arm: float(part["final_psnr"].max() - part["final_psnr"].min()) for arm, part in groups.items()}
    mean = {arm: float(part["final_psnr"].mean()) for arm, part in groups.items()}
    rows = []
    for arm in exp.study_arms():
        if arm.name not in groups:
            continue
        part, cost = groups[arm.name], costs.get(arm.name, {})
        row = {"arm": arm.name, "variant": arm.model, "description": arm.description or None, "seeds": len(part),
               "psnr_mean": mean[arm.name],
               "psnr_min": float(part["final_psnr"].min()), "psnr_max": float(part["final_psnr"].max()),
               "ssim_mean": float(part["final_ssim"].mean()), "lpips_mean": None,
               "pose_swap_drop_db": float(part["pose_swap_drop_db"].mean()),
               "params": cost.get("params", int(part["params"].iloc[0])), "gflops": cost.get("gflops"),
               "latency_ms": cost.get("latency_ms"), "best_trivial_psnr": best_trivial,
               "min_above_trivial_db": None if best_trivial is None else float(part["final_psnr"].min()) - best_trivial}
        if exp.reference and exp.reference in mean and arm.name != exp.reference:
            diff = mean[arm.name] - mean[exp.reference]
            bound = max(spread[arm.name], spread[exp.reference])
            row["diff_vs_reference_db"] = diff
            row["significance"] = ("1 seed: spread unknown" if len(part) < 2 or len(groups[exp.reference]) < 2
                                   else "exceeds seed range" if abs(diff) > bound else f"not significant (seed range {bound:.2f} dB)")
        else:
            row["diff_vs_reference_db"], row["significance"] = None, "reference" if arm.name == exp.reference else None
        row["published"] = arm.published_diff_db if arm.published_diff_db is not None else arm.published_psnr
        row["published_source"] = arm.published_source or None
        rows.append(row)
    return pd.DataFrame(rows)


def measure_cost(exp: ConvergenceExperiment, arm_name: str) -> dict[str, Any]:
    """Parameters, forward FLOPs and latency of one arm at its trained size (random weights: cost does not
    depend on values)."""
    import torch

    from models import build_model
    from ..profile.measure import FlopCounter, measure_call, synthetic_views
    from ..runtime import resolve_device
    from ..schema import Measurement
    spec = exp.model_spec(arm_name)
    model = build_model(spec.name, spec.preset, **spec.overrides)
    config, n, m = model.config, exp.cost.n_input, exp.cost.n_target
    flops = FlopCounter(config).forward(spec.name, n, m)
    threads = torch.get_num_threads()
    torch.set_num_threads(exp.cost.threads)
    try:
        device = resolve_device(exp.train.device)
        model = model.to(device).eval()
        views = synthetic_views(1, n, m, config.image_size, device)
        timing = measure_call(lambda: model(*views), device, "float32",
                              Measurement(warmup=2, runs=exp.cost.runs, min_runs=exp.cost.runs))
    finally:
        torch.set_num_threads(threads)
    return {"params": model.num_parameters(), "gflops": flops.counted / 1e9, "latency_ms": timing["latency_ms"],
            "latency_iqr_ms": timing["latency_iqr_ms"], "noisy": timing["noisy"]}


def write_validation_index(exp: ConvergenceExperiment, out_dir: Path) -> Path:
    """The validation scenes and views as an evaluation index (RealEstate10K index format), so that
    `make eval` scores the trained checkpoints on exactly the split the study validated on."""
    from ..data import save_evaluation_index
    from .data import open_sources, validation_index
    path = out_dir / "validation_index.json"
    save_evaluation_index(validation_index(open_sources(exp.data, cache=False)[1], exp.data), path)
    return path


def unavailable(arm: Arm) -> str:
    """Why an arm cannot train on this machine (its REPA teacher's weights are not there), or ''.
    Such an arm is skipped with one line: never trained against a random teacher."""
    repa = arm.train.get("repa")
    if not repa:
        return ""
    weights = os.path.expandvars(str(repa.get("weights", "")))
    if "$" in weights or not Path(weights).is_file():
        return (f"arm {arm.name} skipped: REPA teacher weights {repa.get('weights')!r} not found"
                + (f" ({weights})" if weights != repa.get("weights") and "$" not in weights else "")
                + (f"; {arm.description}" if arm.description else ""))
    return ""


def run_convergence(exp: ConvergenceExperiment, options: RunOptions) -> pd.DataFrame | None:
    if options.preset:
        exp = revalidate(exp, preset=options.preset)
    world = init_world(exp.train.device)
    try:
        sweep = Sweep(exp.results_dir(), exp.name, writer=world.is_main)
        skipped = [reason for reason in map(unavailable, exp.study_arms()) if reason]
        for reason in skipped:
            print(f"{exp.name}: {reason}")
        arms, seeds = [arm for arm in exp.study_arms() if not unavailable(arm)], exp.run_seeds()
        by_name = {arm.name: arm for arm in arms}
        # Seeds not given: runs/<arm>; given: runs/<arm>/seed<k> (so that runs of one seed at a time land
        # where the run of all seeds looks for them).
        run_dirs = {(arm.name, seed): sweep.out_dir / "runs" / arm.name / (f"seed{seed}" if exp.seeds else "")
                    for arm in arms for seed in seeds}
        trivial_point = {"trivial": exp.data.model_dump(), "sigmas": list(exp.blur_sigmas)}
        # Seed-major: every arm's first seed is trained before any second seed.
        train_points = [{"arm": arm.name, "model": arm.model, "seed": seed,
                         "settings": settings_dict(exp.model_spec(arm), exp.data, exp.optim, exp.train_spec(arm, seed))}
                        for seed in seeds for arm in arms]
        cost_points = [{"cost": arm.name, "model": arm.model, "config": exp.model_spec(arm).model_dump(),
                        "at": exp.cost.model_dump()} for arm in arms]
        points = [trivial_point, *train_points, *cost_points]
        if world.is_main:
            write_manifest(sweep.out_dir, exp, {"world_size": world.size})
            write_validation_index(exp, sweep.out_dir)

        def measure(point: dict[str, Any]) -> dict[str, Any]:
            if "trivial" in point:
                from .data import evaluation_split, open_sources
                split = evaluation_split(open_sources(exp.data)[1], exp.data, batch_size=max(exp.train.batch_size, 8))
                return {"predictors": trivial_baselines(split, exp.blur_sigmas)}
            if "cost" in point:
                return measure_cost(exp, point["cost"]) if world.is_main else {}
            arm, seed = by_name[point["arm"]], point["seed"]
            result = train_model(exp.model_spec(arm), exp.data, exp.optim, exp.train_spec(arm, seed), run_dirs[arm.name, seed],
                                 world=world, progress=options.progress, label=f"{arm.name} seed {seed}")
            if not world.is_main:
                return {}
            if seed == seeds[0]:
                save_renders(sweep.out_dir / f"renders_{arm.name}.png", result)
            columns = final_columns(result)
            log.info("%s seed %d: final PSNR %.2f dB, SSIM %.3f, pose-swap drop %.2f dB, %.0f s training", arm.name, seed,
                     columns["final_psnr"], columns["final_ssim"], columns["pose_swap_drop_db"], columns["seconds"])
            return columns

        def label_of(point: dict[str, Any]) -> str:
            if "trivial" in point:
                return "camera-ignoring predictors"
            return f"cost {point['cost']}" if "cost" in point else f"{point['arm']} seed {point['seed']}"

        sweep.run(points, measure, label_of, options.progress, unit="run")
        if not world.is_main:
            return None
        rows = sweep.rows(points)
        trivial = next((r["predictors"] for r in rows if "trivial" in r and r["status"] == "ok"), {})
        finals = [r for r in rows if "arm" in r and r["status"] == "ok"]
        costs = {r["cost"]: r for r in rows if "cost" in r and r["status"] == "ok"}
        report, summary = convergence_report(exp, finals, trivial, costs, run_dirs)
        report.notes[:0] = [f"failed: {label_of(r)}: {r['error']}" for r in rows if r["status"] != "ok"] + skipped
        missing = len(train_points) - len(finals)
        if missing:
            report.notes.insert(0, f"{missing} of {len(train_points)} runs not finished yet (rerun to resume)")
        write_report(report, sweep.out_dir)
        return summary
    finally:
        close_world(world)


# ------------------------------------------------------------------------------------------ train


def run_train(exp: TrainExperiment, options: RunOptions) -> dict[str, Any] | None:
    if options.preset:
        exp = revalidate(exp, model={**exp.model.model_dump(), "preset": options.preset})
    world = init_world(exp.train.device)
    try:
        sweep = Sweep(exp.results_dir(), exp.name, writer=world.is_main)
        name = exp.model.name
        point = {"variant": name, "settings": settings_dict(exp.model, exp.data, exp.optim, exp.train)}
        if world.is_main:
            write_manifest(sweep.out_dir, exp, {"world_size": world.size})

        def measure(point: dict[str, Any]) -> dict[str, Any]:
            result = train_model(exp.model, exp.data, exp.optim, exp.train, sweep.out_dir, world=world,
                                 progress=options.progress, label=name)
            return final_columns(result) if world.is_main else {}

        sweep.run([point], measure, lambda p: name, options.progress, unit="run")
        if not world.is_main:
            return None
        row = sweep.rows([point])[0]
        if row["status"] != "ok":
            log.error("%s: training failed: %s", name, row["error"])
            return row
        frame = pd.DataFrame([{k: row[k] for k in ("variant", *SUMMARY_COLUMNS[1:5], "pose_swap_drop_db", "params", "loss")
                               if k in row}])
        write_report(Report(f"{exp.name}: {label(name)}", provenance([row], exp),  # type: ignore[arg-type]
                            [Table("final", f"{exp.name}: final validation", frame)]), sweep.out_dir)
        return row
    finally:
        close_world(world)


TRAIN = Kind(TrainExperiment, run_train, "train one model, resumable from its checkpoint")
CONVERGENCE = Kind(ConvergenceExperiment, run_convergence, "several variants trained on one budget: PSNR against steps and seconds")
