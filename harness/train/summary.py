"""What the training kinds report, built from the recorded rows: a trained run's final columns, the
validation curve and the first step above a bar, the per-arm summary over seeds with its cost and
difference to the reference arm, the provenance notes and the convergence report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from ..pipeline import Report, Table
from ..provenance import devices_of, numerics_text
from ..report import Fact, Setting
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
    """(step, wall seconds) of the first validation strictly above `threshold`, or (None, None)."""
    above = curve[curve["psnr"] > threshold]
    if above.empty:
        return None, None
    row = above.iloc[0]
    return int(row["step"]), float(row["wall_seconds"] if "wall_seconds" in row else row["seconds"])


def curve(run_dir: Path) -> pd.DataFrame | None:
    rows = [r for r in read_log(run_dir) if r.get("kind") == "val"]
    return pd.DataFrame(rows)[["step", "seconds", "psnr", "ssim"]].sort_values("step") if rows else None


def provenance(rows: list[dict[str, Any]], exp) -> list[str]:
    if not rows:
        return []
    env, data = rows[-1], exp.data
    commits = ", ".join(sorted({str(r["commit"]) for r in rows}))
    return [f"measured: {devices_of(rows)}, dtype {env['dtype']}, torch {env['torch']}, commit {commits}",
            f"data: {data.source} {json.dumps(data.options)} at {data.image_size}px, {data.n_input} context + "
            f"{data.n_target} target views per training example; validation: {data.eval_scenes} scenes "
            f"{json.dumps({**data.options, **data.eval_options})}, {data.eval_n_target} targets each",
            f"loss: {env['loss']}" + (f" ({env['loss_note']})" if env.get("loss_note") else "")]


def contended_intervals(run_dir: Path) -> int | None:
    """Logging intervals of a run during which other work shared the CPU (`IntervalClock`); None for a run
    logged before intervals were read (unknown, not zero)."""
    logged = [r for r in read_log(run_dir) if r.get("kind") == "train"]
    if not any("contended" in r for r in logged):
        return None
    return sum(1 for r in logged if r.get("contended"))


def convergence_report(exp: ConvergenceExperiment, finals: list[dict[str, Any]], trivial: dict[str, dict[str, float]],
                       costs: dict[str, dict[str, Any]], run_dirs: dict[tuple[str, int], Path],
                       step_costs: dict[str, Any] | None = None) -> tuple[Report, pd.DataFrame]:
    """Seconds are clean where the step cost was measured: steps x the arm's measured cost per step
    (`measure_step_costs`); the training wall-clock stays beside them as `wall_seconds`, since on a
    shared machine it holds whatever else ran."""
    best_trivial = max(v["psnr"] for v in trivial.values()) if trivial else None
    arms = {arm.name: arm for arm in exp.study_arms()}
    colors = arm_colors({name: arm.model for name, arm in arms.items()})
    step_ms = (step_costs or {}).get("step_ms", {})
    runs, rows = [], []
    for final in finals:
        arm, seed = final["arm"], final["seed"]
        run_curve = curve(run_dirs[arm, seed])
        per_step = step_ms.get(arm)
        if run_curve is not None:
            run_curve = run_curve.rename(columns={"seconds": "wall_seconds"})
            run_curve["seconds"] = run_curve["step"] * per_step / 1e3 if per_step else run_curve["wall_seconds"]
        runs.append({"arm": arm, "seed": seed, "label": arm, "curve": run_curve})
        row = {"arm": arm, "variant": final["model"], "seed": seed, "steps": final["steps"],
               "seconds": round(final["steps"] * per_step / 1e3, 1) if per_step else None,
               "step_ms": per_step, "wall_seconds": round(final["seconds"], 1),
               "contended_intervals": contended_intervals(run_dirs[arm, seed]), "device": final.get("device"),
               "numerics": numerics_text(final.get("numerics")) or None,
               "final_psnr": final["final_psnr"], "final_ssim": final["final_ssim"], "best_trivial_psnr": best_trivial,
               "pose_swap_drop_db": final["pose_swap_drop_db"], "swapped_psnr": final["swapped_psnr"],
               "above_trivial_db": None if best_trivial is None else final["final_psnr"] - best_trivial,
               "params": final["params"], "loss": final["loss"]}
        for threshold in ([best_trivial] if best_trivial is not None else []) + list(exp.reach_psnr):
            name = "trivial" if threshold == best_trivial else f"{threshold:g}dB"
            step, wall = first_reach(run_curve, threshold) if run_curve is not None else (None, None)
            row[f"steps_to_{name}"] = step
            row[f"seconds_to_{name}"] = round(step * per_step / 1e3, 1) if step is not None and per_step else None
            row[f"wall_seconds_to_{name}"] = None if wall is None else round(wall, 1)
        rows.append(row)
    final_table = pd.DataFrame(rows)
    summary = arm_summary(exp, final_table, costs, best_trivial)
    notes = provenance(finals, exp) + [
        f"seeds: model initialisation {exp.run_seeds()} (data order and validation split are the same for every seed)",
        "LPIPS: n/a (validation scores PSNR and SSIM; the VGG backbone cannot be downloaded here)",
        f"cost: parameters, forward GFLOPs (FlopCounterMode, 2 x MAC incl. attention) and latency at N={exp.cost.n_input}, "
        f"M={exp.cost.n_target} at each arm's trained size, {exp.cost.threads} thread(s), median of {exp.cost.runs} runs",
    ] + ([f"scale: {exp.scale_note}"] if exp.scale_note else []) + seconds_notes(exp, final_table, step_costs)
    report = Report(f"{exp.name}: final validation quality per arm (same data, steps, batch)", notes)
    report.tables.append(Table("summary", f"{exp.name}: one row per arm", summary, notes + [
        "diff_vs_reference_db: mean PSNR minus its reference arm's (column reference); `not significant` when smaller than the larger "
        "seed range (max - min) of the two arms"] + ([
        "published: what the paper reports for the arm at its own scale (a PSNR or a difference to its reference), "
        "beside ours and never subtracted from it: data, model size, resolution and training differ"]
        if "published" in summary else []),
        columns={"published": {"role": "published", "quantity": "psnr difference", "setting": "published"},
                 "published_source": {"role": "note"}, "variant": {"role": "label"}, "significance": {"role": "note"},
                 "reference": {"role": "label"},
                 "seeds": {"role": "setting"}},
        settings={"published": PAPER_SCALE}))
    if len(summary) > 2:
        ranked = summary.sort_values("psnr_mean", ascending=False)
        line = "ordering by mean PSNR: " + " > ".join(f"{r.arm} {r.psnr_mean:.2f}" for r in ranked.itertuples())
        if exp.reference in set(ranked["arm"]):
            place = list(ranked["arm"]).index(exp.reference) + 1
            line += f"; the reference {exp.reference} ranks {place} of {len(ranked)}"
        report.headlines.append(line)
    for index, row in enumerate(summary.itertuples() if not summary.empty else ()):
        if row.arm == row.variant:  # a variant as released, not an ablation arm
            report.facts.append(Fact(variant=row.variant, quantity=f"PSNR ({exp.name})", value=row.psnr_mean, low=row.psnr_min,
                                     high=row.psnr_max, unit="dB", better="higher", table="summary", row=index))
    report.tables.append(Table("final", f"{exp.name}: one row per trained run", final_table, notes + [
        "steps_to_trivial: first validation step above best_trivial_psnr; seconds, seconds_to_*: steps x the arm's clean "
        "cost per step (step_ms); wall_seconds, wall_seconds_to_*: training wall-clock (steps only, no validation or "
        "checkpoints), which on a shared machine includes other work; device: where the run trained, the machine of "
        "its wall-clock (runs resumed elsewhere name the machine that finished them)"],
        columns={"device": {"role": "setting"}}, console=False))
    trivial_frame = pd.DataFrame([{"predictor": k, "psnr": v["psnr"], "ssim": v["ssim"], "blur_sigma_px": v.get("sigma")}
                                  for k, v in trivial.items()])
    report.tables.append(Table("trivial_predictors", "Predictors that ignore the target camera's view content, on the same "
                               "validation split", trivial_frame, notes[:2] + [
                                   "blurred_mean: the context mean blurred with the Gaussian sigma (pixels) that scores best here"]))
    for row in summary.itertuples() if not summary.empty else ():
        line = (f"{row.arm}: PSNR {row.psnr_mean:.2f} dB" + (f" (seeds {row.psnr_min:.2f} to {row.psnr_max:.2f})" if row.seeds > 1 else "")
                + (f", {row.min_above_trivial_db:+.2f} dB vs the camera-ignoring bar" if row.min_above_trivial_db is not None else ""))
        if row.diff_vs_reference_db is not None and row.diff_vs_reference_db == row.diff_vs_reference_db:
            line += f", {row.diff_vs_reference_db:+.2f} dB vs {row.reference} ({row.significance})"
        if row.published is not None and row.published == row.published:
            line += f"; published {row.published} ({row.published_source})"
        report.headlines.append(line)
    where = f"{devices_of(finals)}, float32; preset {exp.preset}, {exp.data.image_size} px; {exp.data.source}, {exp.train.steps} steps"
    report.figures["psnr_vs_step.png"] = lambda: curves_figure(runs, colors, best_trivial, "step", "optimizer steps", where)
    report.figures["psnr_vs_seconds.png"] = lambda: curves_figure(
        runs, colors, best_trivial, "seconds", "training seconds (steps x clean cost per step)" if step_ms else
        "training wall-clock seconds", where)
    report.headlines += speedup_headlines(exp, final_table)
    if not summary.empty:
        report.figures["psnr_per_arm.png"] = lambda: per_arm_figure(summary, colors, best_trivial, exp.reference, where)
        if summary["gflops"].notna().any():
            timed_on = devices_of(costs.values()) or "device not recorded"
            report.figures["quality_vs_cost.png"] = lambda: cost_figure(summary, colors, timed_on, where)
    return report, summary


def seconds_notes(exp: ConvergenceExperiment, final_table: pd.DataFrame, step_costs: dict[str, Any] | None) -> list[str]:
    if not step_costs:
        return ["seconds: training wall-clock only (no clean step cost recorded); on a shared machine it includes other work"]
    kernels = step_costs.get("numerics") or {}
    spread = ", ".join(f"{arm} {ms:.1f} ms" + (f" (IQR {step_costs['step_iqr_ms'][arm]:.1f})" if step_costs["step_iqr_ms"].get(arm) else "")
                       + (f" [{numerics_text(kernels[arm])}]" if kernels.get(arm) else "") for arm, ms in step_costs["step_ms"].items())
    notes = [f"clean cost per training step, every arm's step timed in turn on one batch of {exp.train.batch_size} after "
             f"training, on {step_costs.get('device', 'this machine')} ({step_costs['rounds']} rounds, "
             f"{exp.train.threads or 'default'} thread(s), commit "
             f"{step_costs.get('commit', 'n/a')}): {spread}" + (f"; timed under contention: {step_costs['contended']}"
                                                                if step_costs.get("contended") else "")]
    if step_costs.get("untimed"):
        notes.append(f"no clean step cost recorded yet for {', '.join(step_costs['untimed'])}: their seconds are training "
                     "wall-clock; a run without --from-records on a quiet machine times them")
    counts = final_table["contended_intervals"] if "contended_intervals" in final_table else pd.Series(dtype=object)
    flagged = final_table[counts.fillna(0).astype(float) > 0]
    if not flagged.empty:
        notes.append("wall-clock under contention: " + ", ".join(f"{r.arm} seed {r.seed} ({r.contended_intervals} logging "
                                                                 "intervals)" for r in flagged.itertuples()))
    for arm, runs in final_table.groupby("arm", sort=False) if "numerics" in final_table else ():
        if runs["numerics"].nunique(dropna=False) > 1:  # e.g. LaCT's bfloat16 step trained on CPUs with and without bfloat16 units
            seeds = "; ".join(f"seed {r.seed}: {r.numerics if isinstance(r.numerics, str) else 'not recorded'}" for r in runs.itertuples())
            notes.append(f"{arm}: its seeds trained with different numerics ({seeds}); the seed range includes that")
    if counts.isna().any():
        notes.append("contended_intervals n/a: runs logged before each interval's CPU time was recorded, so whether "
                     "their wall-clock was shared is unknown (compare the clean seconds)")
    return notes


def speedup_headlines(exp: ConvergenceExperiment, final_table: pd.DataFrame) -> list[str]:
    """The claimed arm's speed-up over the other arm to each PSNR both reach, in steps and in clean seconds
    (first seeds), beside the factor the paper claims."""
    claim = exp.speedup_claim
    if claim is None or final_table.empty:
        return []
    first = final_table.sort_values("seed").groupby("arm").first()
    if not {claim.arm, claim.over} <= set(first.index):
        return []
    lines = []
    for threshold in exp.reach_psnr:
        name = f"{threshold:g}dB"
        fast, slow = first.loc[claim.arm], first.loc[claim.over]
        if fast.get(f"steps_to_{name}") is None or slow.get(f"steps_to_{name}") is None or \
                pd.isna(fast[f"steps_to_{name}"]) or pd.isna(slow[f"steps_to_{name}"]):
            lines.append(f"{claim.arm} vs {claim.over} to {name}: not both reached (published {claim.factor:g}x, {claim.source})")
            continue
        if fast[f"steps_to_{name}"] <= 0:  # above it before training: no ratio to read
            lines.append(f"{claim.arm} is above {name} at step 0: no speed-up to read (published {claim.factor:g}x, {claim.source})")
            continue
        steps = slow[f"steps_to_{name}"] / fast[f"steps_to_{name}"]
        seconds = (slow[f"seconds_to_{name}"] / fast[f"seconds_to_{name}"]
                   if fast.get(f"seconds_to_{name}") and slow.get(f"seconds_to_{name}") else None)
        lines.append(f"speed-up of {claim.arm} over {claim.over} to {name} ({claim.over}'s cost / {claim.arm}'s): "
                     f"{steps:.2f}x in steps" + (f", {seconds:.2f}x in clean seconds" if seconds is not None else "")
                     + f"; published {claim.factor:g}x ({claim.source}); validation every {exp.train.val_every} steps, so "
                       "steps are read to that resolution")
    return lines


# What the papers' ablation numbers were measured at, as far as they say: their own data and scale.
PAPER_SCALE = Setting(note="the paper's own data, model size, resolution and training (its scale, not ours)")


def arm_summary(exp: ConvergenceExperiment, final_table: pd.DataFrame, costs: dict[str, dict[str, Any]],
                best_trivial: float | None) -> pd.DataFrame:
    """One row per arm: mean and range over seeds, cost, the bar, the difference to the reference arm."""
    if final_table.empty:
        return pd.DataFrame()
    groups = {arm: part for arm, part in final_table.groupby("arm", sort=False)}
    spread = {arm: float(part["final_psnr"].max() - part["final_psnr"].min()) for arm, part in groups.items()}
    mean = {arm: float(part["final_psnr"].mean()) for arm, part in groups.items()}
    rows = []
    references = {arm.reference or exp.reference for arm in exp.study_arms()} - {""}
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
        reference = arm.reference or exp.reference
        row["reference"] = reference or None
        if reference and reference in mean and arm.name != reference:
            diff = mean[arm.name] - mean[reference]
            bound = max(spread[arm.name], spread[reference])
            row["diff_vs_reference_db"] = diff
            row["significance"] = ("1 seed: spread unknown" if len(part) < 2 or len(groups[reference]) < 2
                                   else "exceeds seed range" if abs(diff) > bound else f"not significant (seed range {bound:.2f} dB)")
        else:
            row["diff_vs_reference_db"], row["significance"] = None, "reference" if arm.name in references else None
        row["published"] = arm.published_diff_db if arm.published_diff_db is not None else arm.published_psnr
        row["published_source"] = arm.published_source or None
        rows.append(row)
    return pd.DataFrame(rows)


