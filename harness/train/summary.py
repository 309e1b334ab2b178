"""What the training kinds report, built from the recorded rows: a trained run's final columns, the
validation curve and the first step above a bar, the per-arm summary over seeds with its cost and
difference to the reference arm, the provenance notes and the convergence report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from ..pipeline import Report, Table
from .config import ConvergenceExperiment
from .figures import arm_colors, cost_figure, curves_figure, per_arm_figure
from .loop import RunResult, read_log
from .validation import pose_swap_drop

SUMMARY_COLUMNS = ["variant", "steps", "seconds", "final_psnr", "final_ssim", "best_trivial_psnr", "pose_swap_drop_db"]


def final_columns(result: RunResult) -> dict[str, Any]:
    final = [r for r in result.validation if r["step"] == result.step]
    if not final:
        raise RuntimeError(f"no validation row at the final step {result.step}")
    swap = pose_swap_drop(result.model, result.eval_split, result.device, result.dtype)
    return {"steps": result.step, "seconds": result.train_seconds, "final_psnr": final[-1]["psnr"],
            "final_ssim": final[-1]["ssim"], "pose_swap_drop_db": swap["pose_swap_drop_db"],
            "swapped_psnr": swap["swapped_psnr"], "params": result.model.num_parameters(), "loss": result.loss,
            "loss_note": result.loss_note, "dtype": result.dtype, **result.environment,
            **({"numerics": numerics} if (numerics := result.model.numerics(result.device)) else {})}


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


