"""The convergence study's outputs, rebuilt from the records and the per-run logs alone: summary.csv,
the final table, steps-to-reach-a-PSNR, the curves, and the settings used."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from ..plots import plt, save_figure
from ..records import write_atomic
from ..tables import write_tables
from .loop import read_log

SUMMARY_COLUMNS = ["variant", "steps", "seconds", "final_psnr", "final_ssim", "best_trivial_psnr", "pose_swap_drop_db"]


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


def plot_curves(data: dict[str, pd.DataFrame], trivial: float | None, out_dir: Path, title: str) -> list[Path]:
    paths = []
    for axis, label, stem in (("step", "optimizer steps", "psnr_vs_step"), ("seconds", "training wall-clock seconds", "psnr_vs_seconds")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for variant, curve in data.items():
            ax.plot(curve[axis], curve["psnr"], marker=".", label=variant)
        if trivial is not None:
            ax.axhline(trivial, color="gray", linestyle="--", linewidth=1, label="best camera-ignoring predictor")
        ax.set_xlabel(label)
        ax.set_ylabel("validation PSNR (dB)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        paths.append(save_figure(fig, out_dir / f"{stem}.png"))
    return paths


def write_report(out_dir: Path, finals: list[dict[str, Any]], trivial: dict[str, dict[str, float]],
                 run_dirs: dict[str, Path], reach: list[float], settings: dict[str, Any], provenance: list[str]) -> pd.DataFrame:
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
        for threshold in ([best_trivial] if best_trivial is not None else []) + list(reach):
            name = "trivial" if threshold == best_trivial else f"{threshold:g}dB"
            step, seconds = first_reach(curve, threshold) if curve is not None else (None, None)
            row[f"steps_to_{name}"], row[f"seconds_to_{name}"] = step, None if seconds is None else round(seconds, 1)
        rows.append(row)
    summary = pd.DataFrame(rows)
    summary = summary[SUMMARY_COLUMNS + [c for c in summary.columns if c not in SUMMARY_COLUMNS]]
    write_atomic(out_dir / "summary.csv", summary.to_csv(index=False, na_rep="n/a"))
    write_tables(summary, out_dir, "final", "Convergence: final validation quality per variant (same data, steps, batch)",
                 provenance + ["steps_to_trivial: first validation step above best_trivial_psnr; "
                               "seconds count training steps only (no validation, no checkpoints)"])
    trivial_df = pd.DataFrame([{"predictor": k, "psnr": v["psnr"], "ssim": v["ssim"], "blur_sigma_px": v.get("sigma")}
                               for k, v in trivial.items()])
    write_tables(trivial_df, out_dir, "trivial_predictors",
                 "Predictors that ignore the target camera's view content, on the same validation split",
                 provenance + ["blurred_mean: the context mean blurred with the Gaussian sigma (pixels) that scores best here"])
    plot_curves(data, best_trivial, out_dir, "validation PSNR; dashed: best camera-ignoring predictor")
    write_atomic(out_dir / "settings.json", json.dumps(settings, indent=2, sort_keys=True, default=str) + "\n")
    return summary
