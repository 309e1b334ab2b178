"""The figures of the training kinds: a trained model's renders beside the ground truth, validation
PSNR against steps and seconds, the final PSNR per arm with its seed range, and quality against cost
with the Pareto front (the points no other beats on both). Each arm keeps one colour (its variant's
card colour when arms are variants)."""
from __future__ import annotations

import io
import zlib
from pathlib import Path
from typing import Any

import pandas as pd

from models import model_card

from ..plots import label_points, legend_outside, plt
from ..records import write_atomic
from .loop import RunResult


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



# Shades of a variant's card colour for the arms built on it: 0 is the card colour itself (the variant as
# registered), the others mix it with white (+) or black (-).
SHADES = (0.0, -0.35, 0.4, -0.6, 0.6, -0.2, 0.2)


def shade(color: Any, amount: float) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb
    rgb = to_rgb(color)
    target = 1.0 if amount > 0 else 0.0
    return tuple(c + (target - c) * abs(amount) for c in rgb)  # type: ignore[return-value]


def arm_colors(arms: dict[str, str]) -> dict[str, Any]:
    """arm -> variant: a colour per arm from its base variant's card (an ablation's base is the variant it
    ablates). An arm named as its base variant gets the card colour; any other arm a shade of it picked by
    its name, so the same arm has the same colour on every page (the next free shade where two arms of one
    page would share one)."""
    out: dict[str, Any] = {}
    taken: dict[str, set[int]] = {}
    for arm, variant in arms.items():
        base = model_card(variant).ablation_of or variant
        used = taken.setdefault(base, set())
        start = 0 if arm == base else 1 + zlib.crc32(arm.encode()) % (len(SHADES) - 1)
        index = next((i for i in (start, *range(1, len(SHADES))) if i not in used), start)
        used.add(index)
        out[arm] = shade(model_card(base).color, SHADES[index])
    return out


def curves_figure(runs: list[dict[str, Any]], colors: dict[str, Any], trivial: float | None, axis: str, xlabel: str,
                  where: str = ""):
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
    several = any(run["seed"] != first_seed[run["arm"]] for run in runs if run["arm"] in first_seed)
    ax.set_title("validation PSNR per arm" + (" (dashed: further seeds)" if several else "") + "; dotted: camera-ignoring bar"
                 + (f"\n{where}" if where else ""), fontsize=8)
    ax.grid(alpha=0.3)
    legend_outside(ax)
    return fig


def per_arm_figure(summary: pd.DataFrame, colors: dict[str, Any], trivial: float | None, reference: str, where: str = ""):
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
    if where:
        ax.set_title(where, fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    legend_outside(ax)
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


def cost_figure(summary: pd.DataFrame, colors: dict[str, Any], device: str, where: str = ""):
    columns = [("gflops", "forward GFLOPs (N=2, M=1)"), ("latency_ms", f"latency ms (N=2, M=1; {device})")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), layout="constrained")
    labelled = []
    for ax, (column, xlabel) in zip(axes, columns):
        part = summary.dropna(subset=[column, "psnr_mean"])
        costs, quality = [float(v) for v in part[column]], [float(v) for v in part["psnr_mean"]]
        for row, x, y in zip(part.itertuples(), costs, quality):
            ax.scatter(x, y, color=colors[row.arm], s=40, zorder=3)
        front = pareto(costs, quality)
        if front:
            ax.plot([costs[i] for i in front], [quality[i] for i in front], color="black", linewidth=1, linestyle="--",
                    label="Pareto front", zorder=2)
        ax.margins(x=0.15, y=0.12)  # room for the labels of the outermost points
        ax.set_xlabel(xlabel)
        ax.set_ylabel("final validation PSNR (dB, mean over seeds)")
        ax.grid(alpha=0.3)
        labelled.append((ax, costs, quality, list(part["arm"])))
    handles, names = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="outside lower center", fontsize=7)
    fig.suptitle("quality against cost" + (f"\n{where}" if where else ""), fontsize=9)
    for ax, costs, quality, arms in labelled:  # last: the layout is final
        label_points(ax, costs, quality, arms)
    return fig


