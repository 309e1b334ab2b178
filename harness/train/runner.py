"""Experiment kinds `train` (one model) and `convergence` (several variants, one budget), on the
shared pipeline: each trained variant is one point of `rows.jsonl` (its final validation, pose-swap
drop and timing), and so are the camera-ignoring predictors every variant must beat. A point trains
in `runs/<variant>/` (checkpoint and training log), so an interrupted run resumes mid-training.

Both run as one process or under `torchrun` (every rank trains; rank 0 records and writes)."""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from models import label, list_models, model_card

from ..pipeline import Report, Sweep, Table, write_manifest, write_report
from ..plots import plt
from ..records import write_atomic
from ..schema import Kind, RunOptions, revalidate
from .config import ConvergenceExperiment, TrainExperiment, settings_dict
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


def curves(run_dirs: dict[str, Path]) -> dict[str, pd.DataFrame]:
    out = {}
    for variant, run_dir in run_dirs.items():
        rows = [r for r in read_log(run_dir) if r.get("kind") == "val"]
        if rows:
            out[variant] = pd.DataFrame(rows)[["step", "seconds", "psnr", "ssim"]].sort_values("step")
    return out


def curve_figure(data: dict[str, pd.DataFrame], trivial: float | None, axis: str, xlabel: str, title: str):
    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, curve in data.items():
        color = model_card(variant).color if variant in list_models() else None
        ax.plot(curve[axis], curve["psnr"], marker=".", color=color, label=label(variant))
    if trivial is not None:
        ax.axhline(trivial, color="gray", linestyle="--", linewidth=1, label="best camera-ignoring predictor")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation PSNR (dB)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def provenance(rows: list[dict[str, Any]], exp: ConvergenceExperiment) -> list[str]:
    if not rows:
        return []
    env, data = rows[-1], exp.data
    return [f"measured: {env['device']}, dtype {env['dtype']}, torch {env['torch']}, commit {env['commit']}",
            f"data: {data.source} {json.dumps(data.options)} at {data.image_size}px, {data.n_input} context + "
            f"{data.n_target} target views per training example; validation: {data.eval_scenes} scenes "
            f"{json.dumps({**data.options, **data.eval_options})}, {data.eval_n_target} targets each",
            f"loss: {env['loss']}" + (f" ({env['loss_note']})" if env.get("loss_note") else "")]


def convergence_report(exp: ConvergenceExperiment, finals: list[dict[str, Any]], trivial: dict[str, dict[str, float]],
                       run_dirs: dict[str, Path]) -> tuple[Report, pd.DataFrame]:
    best_trivial = max(v["psnr"] for v in trivial.values()) if trivial else None
    data = curves(run_dirs)
    rows = []
    for final in finals:
        variant = final["variant"]
        row = {"variant": variant, "steps": final["steps"], "seconds": round(final["seconds"], 1),
               "final_psnr": final["final_psnr"], "final_ssim": final["final_ssim"], "best_trivial_psnr": best_trivial,
               "pose_swap_drop_db": final["pose_swap_drop_db"], "swapped_psnr": final["swapped_psnr"],
               "above_trivial_db": None if best_trivial is None else final["final_psnr"] - best_trivial,
               "params": final["params"], "loss": final["loss"]}
        curve = data.get(variant)
        for threshold in ([best_trivial] if best_trivial is not None else []) + list(exp.reach_psnr):
            name = "trivial" if threshold == best_trivial else f"{threshold:g}dB"
            step, seconds = first_reach(curve, threshold) if curve is not None else (None, None)
            row[f"steps_to_{name}"], row[f"seconds_to_{name}"] = step, None if seconds is None else round(seconds, 1)
        rows.append(row)
    summary = pd.DataFrame(rows)
    if not summary.empty:
        summary = summary[SUMMARY_COLUMNS + [c for c in summary.columns if c not in SUMMARY_COLUMNS]]
    notes = provenance(finals, exp)
    report = Report("Convergence: final validation quality per variant (same data, steps, batch)", notes)
    report.tables.append(Table("final", report.title, summary, notes + [
        "steps_to_trivial: first validation step above best_trivial_psnr; "
        "seconds count training steps only (no validation, no checkpoints)"]))
    trivial_frame = pd.DataFrame([{"predictor": k, "psnr": v["psnr"], "ssim": v["ssim"], "blur_sigma_px": v.get("sigma")}
                                  for k, v in trivial.items()])
    report.tables.append(Table("trivial_predictors", "Predictors that ignore the target camera's view content, on the same "
                               "validation split", trivial_frame, notes + [
                                   "blurred_mean: the context mean blurred with the Gaussian sigma (pixels) that scores best here"]))
    title = "validation PSNR; dashed: best camera-ignoring predictor"
    report.figures["psnr_vs_step.png"] = lambda: curve_figure(data, best_trivial, "step", "optimizer steps", title)
    report.figures["psnr_vs_seconds.png"] = lambda: curve_figure(data, best_trivial, "seconds", "training wall-clock seconds", title)
    return report, summary


def run_convergence(exp: ConvergenceExperiment, options: RunOptions) -> pd.DataFrame | None:
    if options.preset:
        exp = revalidate(exp, preset=options.preset)
    world = init_world(exp.train.device)
    try:
        sweep = Sweep(exp.results_dir(), exp.name, writer=world.is_main)
        run_dirs = {v: sweep.out_dir / "runs" / v for v in exp.variants}
        trivial_point = {"trivial": exp.data.model_dump(), "sigmas": list(exp.blur_sigmas)}
        points = [trivial_point] + [{"variant": v, "settings": settings_dict(exp.model_spec(v), exp.data, exp.optim, exp.train)}
                                    for v in exp.variants]
        if world.is_main:
            write_manifest(sweep.out_dir, exp, {"world_size": world.size})

        def measure(point: dict[str, Any]) -> dict[str, Any]:
            if "trivial" in point:
                from .data import evaluation_split, open_sources
                split = evaluation_split(open_sources(exp.data)[1], exp.data, batch_size=max(exp.train.batch_size, 8))
                return {"predictors": trivial_baselines(split, exp.blur_sigmas)}
            variant = point["variant"]
            result = train_model(exp.model_spec(variant), exp.data, exp.optim, exp.train, run_dirs[variant], world=world,
                                 progress=options.progress, label=variant)
            if not world.is_main:
                return {}
            save_renders(sweep.out_dir / f"renders_{variant}.png", result)
            columns = final_columns(result)
            log.info("%s: final PSNR %.2f dB, SSIM %.3f, pose-swap drop %.2f dB, %.0f s training", variant,
                     columns["final_psnr"], columns["final_ssim"], columns["pose_swap_drop_db"], columns["seconds"])
            return columns

        sweep.run(points, measure, lambda p: p.get("variant", "camera-ignoring predictors"), options.progress, unit="run")
        if not world.is_main:
            return None
        rows = sweep.rows(points)
        trivial = next((r["predictors"] for r in rows if "trivial" in r and r["status"] == "ok"), {})
        finals = [r for r in rows if "variant" in r and r["status"] == "ok"]
        report, summary = convergence_report(exp, finals, trivial, run_dirs)
        report.notes[:0] = [f"failed: {r.get('variant', 'predictors')}: {r['error']}" for r in rows if r["status"] != "ok"]
        write_atomic(sweep.out_dir / "summary.csv", summary.to_csv(index=False, na_rep="n/a"))
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
