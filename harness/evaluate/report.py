"""The report of an evaluation, rebuilt from the recorded rows (never from in-memory state): the
per-scene and summary tables, the published rows beside ours, the notes that say where every number
came from, the headlines and a grid of inputs, ground truth and every model's render."""
from __future__ import annotations

import functools
from typing import Any, Callable

import pandas as pd
import torch

from models import label as variant_label, list_models, model_card

from ..metrics import METRICS, mean_over_scenes, none_if_nan
from ..pipeline import Report, Table, measured_commits
from ..report import Setting, differing, measured_setting
from .inputs import RANDOM_INIT, ResolvedData
from .spec import EvaluateSpec


def tables(rows: list[dict[str, Any]], labels: list[str]) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(per-scene table, summary with one row per model label, failure lines) of this run's rows."""
    ok = [r for r in rows if r.get("status") == "ok"]
    failures = [f"{r['model']} / {r['scene']}: {r.get('error')}" for r in rows if r.get("status") != "ok"]
    per_scene = pd.DataFrame(ok, columns=["model", "scene", *METRICS, "targets", "scored_px", "flag", "weights", "dtype",
                                          "device", "commit"])
    summary = mean_over_scenes(ok) if ok else pd.DataFrame(columns=["model", *METRICS, "scenes"])
    failed = pd.Series([r["model"] for r in rows if r.get("status") != "ok"], dtype=object).value_counts()
    info = {row["model"]: row for row in ok}
    out = []
    for label in labels:
        if label not in info:
            out.append({"model": label, "scenes": 0, "failed": int(failed.get(label, 0)),
                        "source": "not measured: every scene failed (see the notes)"})
            continue
        base = info[label]
        sums = summary[summary["model"] == label].iloc[0]
        # A checkpoint's weights come with their own config ("size" says it); the preset its run started from is not
        # what ran once its overrides are applied.
        preset = base["preset"] if base["weights"] == RANDOM_INIT else "from checkpoint"
        out.append({"model": label, "weights": base["weights"], "preset": preset, "size": base.get("size", "n/a"),
                    **{m: none_if_nan(sums[m]) for m in METRICS}, "scenes": int(sums["scenes"]),
                    "flagged": sum(1 for r in ok if r["model"] == label and r.get("flag")),
                    "failed": int(failed.get(label, 0)),
                    "source": f"measured: {base['device']}, {base['dtype']}, commit {base['commit']}"})
    columns = ["model", "weights", "preset", "size", *METRICS, "scenes", "flagged", "failed", "source"]
    return per_scene, pd.DataFrame(out, columns=columns), failures


def setting(spec: EvaluateSpec, data: ResolvedData, rows: list[dict[str, Any]]) -> Setting:
    """What the scores used: the device, the context and target views the index gave each scene, the data,
    its protocol and image size, and the scenes scored."""
    ok = [r for r in rows if r.get("status") == "ok"]
    n_context = {len((r.get("views") or {}).get("context") or r.get("context") or []) for r in ok}
    n_target = {len((r.get("views") or {}).get("target") or r.get("target") or []) for r in ok}
    # Weights from checkpoints carry their own config: the preset named in their rows is not what ran.
    trained = {"preset": None} if all(m.checkpoint for m in spec.models) else {}
    return measured_setting(
        ok, model={**trained, "image_size": getattr(data.source, "image_size", None),
                   "patch_size": getattr(data.source, "patch_size", None)},
        views={"n_input": n_context.pop() if len(n_context) == 1 else None,
               "n_target": n_target.pop() if len(n_target) == 1 else None},
        data={"source": spec.data.source, "protocol": spec.data.protocol, "scenes": len({r["scene"] for r in ok}) or None})


def published_rows(spec: EvaluateSpec) -> list[tuple[dict[str, Any], Setting]]:
    """The published rows (the variants' cards' `card_table`, then the spec's own), each with its setting."""
    rows: list[tuple[dict[str, Any], Setting]] = []
    if spec.card_table:
        for model in spec.models:
            published = model_card(model.name).published.get(spec.card_table)
            if published is not None and variant_label(model.name) not in [r["model"] for r, _ in rows]:
                rows.append(({"model": variant_label(model.name), "weights": "published", **dict(published.values),
                              "source": f"published: {published.source}"}, Setting.model_validate(published.setting)))
    if spec.published:
        rows += [({"model": r.model, "weights": "published", "psnr": r.psnr, "ssim": r.ssim, "lpips": r.lpips,
                   "source": f"published: {r.source or spec.published.source}"}, spec.published.setting)
                 for r in spec.published.rows]
    return rows


def summary_table(spec: EvaluateSpec, summary: pd.DataFrame, ours: Setting, title: str, notes: list[str]) -> Table:
    """The summary, then the published rows beside it: each row says which setting it was measured under,
    and a published row is subtracted from ours nowhere unless the settings match (`report.differing`)."""
    published = published_rows(spec)
    frame = summary.assign(setting="ours")
    settings: dict[str, Setting] = {}
    notes = list(notes)
    for index, (row, row_setting) in enumerate(published):
        key = f"published {index + 1}"
        settings[key] = row_setting
        differs = differing("psnr", ours, row_setting)
        notes.append(f"{key} ({row['model']}): " + ("same setting as ours" if not differs else
                     "not subtracted from ours, the settings differ: " + "; ".join(differs)))
        frame = pd.concat([frame, pd.DataFrame([{**row, "setting": key}]).reindex(columns=frame.columns)], ignore_index=True)
    status = ["failed" if not row.get("scenes") else "ok" for row in summary.to_dict(orient="records")] + ["published"] * len(published)
    return Table("summary", title, frame, notes, settings=settings, status=status,
                 columns={"setting": {"role": "setting"}, "weights": {"role": "label"}, "size": {"role": "label"},
                          "scenes": {"role": "setting"}, "flagged": {"quantity": "count"}, "failed": {"quantity": "count"}})


def protocol_notes(spec: EvaluateSpec, data: ResolvedData, rows: list[dict[str, Any]]) -> list[str]:
    """Which evaluation protocol framed the images, and every scene it scored at another size."""
    from ..data import get_protocol
    size = getattr(data.source, "image_size", None)
    if "protocol" not in data.identity["options"]:
        return [f"Evaluation protocol {spec.data.protocol}: nothing to resize (source {spec.data.source} renders its views "
                "at the image size)"]
    out = [f"Evaluation protocol {spec.data.protocol}: {get_protocol(spec.data.protocol).summary}"
           + (f"; image size {size}, patch {data.source.patch_size}" if size is not None else "; images at their files' size")]
    flagged = sorted({(r["scene"], r["flag"]) for r in rows if r.get("status") == "ok" and r.get("flag")})
    if flagged:
        shown = "; ".join(f"{scene} ({flag})" for scene, flag in flagged[:5]) + (" ..." if len(flagged) > 5 else "")
        out.append(f"{len({s for s, _ in flagged})} scene(s) scored at another size than {size}x{size}, as the protocol "
                   f"does for portrait frames (column 'flagged'; per_scene.csv 'flag'): {shown}")
    return out


def notes(spec: EvaluateSpec, data: ResolvedData, environment: dict[str, Any], dtype: str, lpips_message: str,
          failures: list[str], rows: list[dict[str, Any]] = ()) -> list[str]:
    options = ", ".join(f"{k}={v}" for k, v in data.identity["options"].items())
    index = data.identity["index"]
    index_text = index.get("file") or f"drawn ({spec.data.n_input} inputs, {spec.data.n_target} targets, seed {spec.data.seed})"
    out = [
        f"Measured rows: dataset {spec.data.source} ({options}), {len(data.index)} scenes, evaluation index {index_text}",
        *([f"{data.not_in_source} scenes of the index are not in the source and were not evaluated"]
          if data.not_in_source else []),
        # The commit that scored the rows (a report rebuilt from records later keeps it).
        f"device {environment['device']}, dtype {dtype}, torch {environment['torch']}, "
        f"commit {', '.join(measured_commits(rows)) or environment['commit']}",
        "Protocol (pixelSplat/MVSplat/LVSM): PSNR on [0,1]-clamped images; SSIM skimage win 11, gaussian, "
        "data_range 1; LPIPS normalize=True; mean over each scene's targets, then over scenes",
        f"LPIPS: {lpips_message}",
    ]
    if any(not m.checkpoint for m in spec.models):
        out.append("weights 'random-init': freshly initialised models (no checkpoint); their numbers say nothing "
                   "about the trained models")
    if spec.published and spec.published.rows:
        out.append(f"Published rows: {spec.published.source}; not measured here")
    if failures:
        out.append(f"{len(failures)} (model, scene) evaluation(s) failed and are left out of the means "
                   f"(a rerun retries them): " + "; ".join(failures[:5]) + (" ..." if len(failures) > 5 else ""))
    return out


def build(spec: EvaluateSpec, summary: pd.DataFrame, notes: list[str], ours: Setting, first_target_psnr: dict[tuple[str, str], float],
          grid_examples: Callable[[], dict[str, Any]] | None, grid_renders: dict[tuple[str, str], torch.Tensor]) -> Report:
    """The summary table with the published rows, one headline per measured model, and the grid
    (`grid_examples` reads the grid scenes' examples when the figure is drawn)."""
    title = f"{spec.name}: image quality ({spec.data.source})"
    result = Report(title, notes, [summary_table(spec, summary, ours, title, notes)], setting=ours)
    for row in summary.itertuples():
        if row.psnr is not None and row.psnr == row.psnr:
            published = model_card(row.model).published.get(spec.card_table) if row.model in list_models() else None
            result.headlines.append(f"{row.model} ({row.weights}): PSNR {row.psnr:.2f} dB, SSIM {row.ssim:.3f}"
                                    + (f", LPIPS {row.lpips:.3f}" if row.lpips is not None and row.lpips == row.lpips else "")
                                    + (f"; published {published.values.get('psnr')} dB ({published.source})" if published else ""))
    if grid_renders and grid_examples is not None:
        examples = functools.cache(grid_examples)
        if spec.grid_scenes:
            result.figures["grid.png"] = lambda: grid_figure(spec, dict(list(examples().items())[:spec.grid_scenes]), grid_renders)
        for scene in list(dict.fromkeys(s for _, s in grid_renders))[:spec.scene_renders]:
            result.figures[f"scenes/{scene}.png"] = functools.partial(
                lambda scene: scene_strip(spec, scene, examples().get(scene), grid_renders, first_target_psnr), scene)
    return result


def first_target_psnrs(rows: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    """(model label, scene) -> the PSNR of its render of the scene's first target view (the one the strips show)."""
    out = {}
    for row in rows:
        target = (row.get("views") or {}).get("target") or row.get("target") or []
        for view in row.get("per_view") or []:
            if target and view.get("view") == target[0] and view.get("psnr") is not None:
                out[(str(row["model"]), str(row["scene"]))] = float(view["psnr"])
    return out


def scene_strip(spec: EvaluateSpec, scene: str, example: Any, renders: dict[tuple[str, str], torch.Tensor],
                psnrs: dict[tuple[str, str], float]):
    """One scene in a row: each context view, the first target's ground truth, and every model's render of that
    target with its PSNR, each column labelled."""
    from ..plots import plt
    from .spec import label_of
    if example is None:
        return None
    labels = [label_of(m, spec.models) for m in spec.models]
    images = [*example.input_images, example.target_images[0], *[renders.get((label, scene)) for label in labels]]
    titles = ([f"context {i + 1}" for i in range(example.input_images.shape[0])] + ["ground truth"]
              + [f"{label}\n" + (f"{psnrs[(label, scene)]:.2f} dB" if (label, scene) in psnrs else "n/a") for label in labels])
    fig, axes = plt.subplots(1, len(images), figsize=(1.3 * len(images), 1.75), squeeze=False)
    for ax, image, title in zip(axes[0], images, titles):
        ax.axis("off")
        if image is not None:
            ax.imshow(image.clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(title, fontsize=6)
    fig.suptitle(scene, fontsize=7)
    return fig


def grid_figure(spec: EvaluateSpec, examples: dict[str, Any], renders: dict[tuple[str, str], torch.Tensor]):
    """One row per scene: the input views, the first target's ground truth and every model's render of it."""
    from ..plots import plt
    from .spec import label_of
    if not examples:
        return None
    labels = [label_of(m, spec.models) for m in spec.models]
    scenes = list(examples)
    n_input = max(ex.input_images.shape[0] for ex in examples.values())
    columns = [f"input {i + 1}" for i in range(n_input)] + ["ground truth"] + labels
    fig, axes = plt.subplots(len(scenes), len(columns), figsize=(1.5 * len(columns), 1.5 * len(scenes)), squeeze=False)
    for r, scene in enumerate(scenes):
        ex = examples[scene]
        images = list(ex.input_images) + [ex.target_images[0]] + [renders.get((label, scene)) for label in labels]
        for c, image in enumerate(images):
            ax = axes[r, c]
            ax.axis("off")
            if image is not None:
                ax.imshow(image.clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest")
            if r == 0:
                ax.set_title(columns[c], fontsize=6)
        axes[r, 0].text(-0.08, 0.5, scene, transform=axes[r, 0].transAxes, fontsize=5, rotation=90, ha="right", va="center")
    weights = {label: RANDOM_INIT if not m.checkpoint else "checkpoint" for label, m in zip(labels, spec.models)}
    fig.suptitle(f"{spec.name}: first target view; models: " + ", ".join(f"{k} ({v})" for k, v in weights.items()),
                 fontsize=7)
    return fig
