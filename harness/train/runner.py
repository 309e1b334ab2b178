"""Experiment kinds `train` (one model) and `convergence` (several variants, one budget).

Both run as one process or under `torchrun` (every rank runs the same code; rank 0 writes)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..experiment import register_kind
from ..provenance import code_version
from ..records import RecordStore, point_key
from .config import ConvergenceExperiment, TrainExperiment, settings_dict
from .distributed import World, close_world, init_world
from .loop import RunResult, train_model
from .report import write_report
from .validation import pose_swap_drop, trivial_baselines


def save_renders(path: Path, result: RunResult, examples: int = 6) -> None:
    """PNG, one row per validation example: context views | ground-truth targets | renders."""
    import io

    import torch
    from PIL import Image

    from ..records import write_atomic
    from .validation import model_predictor
    batch = {k: (v[:examples] if hasattr(v, "shape") else v[:examples]) for k, v in result.eval_split.batches[0].items()}
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


def final_row(variant: str, result: RunResult) -> dict[str, Any]:
    final = [r for r in result.validation if r["step"] == result.step]
    if not final:
        raise RuntimeError(f"{variant}: no validation row at the final step {result.step}")
    swap = pose_swap_drop(result.model, result.eval_split, result.device, result.dtype)
    return {"variant": variant, "steps": result.step, "seconds": result.train_seconds,
            "final_psnr": final[-1]["psnr"], "final_ssim": final[-1]["ssim"],
            "pose_swap_drop_db": swap["pose_swap_drop_db"], "swapped_psnr": swap["swapped_psnr"],
            "params": result.model.num_parameters(), "loss": result.loss, "loss_note": result.loss_note,
            "dtype": result.dtype, **result.environment}


def _provenance(rows: list[dict[str, Any]], exp) -> list[str]:
    if not rows:
        return []
    env = rows[-1]
    data = exp.data
    return [f"measured: {env['device']}, dtype {env['dtype']}, torch {env['torch']}, commit {env['commit']}",
            f"data: {data.source} {json.dumps(data.options)} at {data.image_size}px, {data.n_input} context + "
            f"{data.n_target} target views per training example; validation: {data.eval_scenes} scenes "
            f"{json.dumps({**data.options, **data.eval_options})}, {data.eval_n_target} targets each",
            f"loss: {env['loss']}" + (f" ({env['loss_note']})" if env.get("loss_note") else "")]


@register_kind("convergence", ConvergenceExperiment)
def run_convergence(exp: ConvergenceExperiment, preset: str | None = None, progress: bool = True, **_: Any):
    if preset:
        exp.preset = preset
        exp.__post_init__()
    world = init_world(exp.train.device)
    out_dir = exp.results_dir()
    store = RecordStore(out_dir / "records.jsonl")
    version = code_version()
    run_dirs = {v: out_dir / "runs" / v for v in exp.variants}
    finals, trivial = [], {}
    try:
        for variant in exp.variants:
            spec = exp.model_spec(variant)
            key = point_key(exp.name, {"variant": variant, **settings_dict(spec, exp.data, exp.optim, exp.train)}, version)
            done = {r["key"]: r for r in store.rows() if r.get("kind") == "final"}
            if key in done:
                finals.append(done[key])
                continue
            result = train_model(spec, exp.data, exp.optim, exp.train, run_dirs[variant], world=world,
                                 progress=progress, label=variant)
            if world.is_main:
                if not trivial:
                    trivial = _trivial(exp, result, store, version)
                row = {"kind": "final", "key": key, **final_row(variant, result)}
                save_renders(out_dir / f"renders_{variant}.png", result)
                store.append(row)
                finals.append(row)
                print(f"{variant}: final PSNR {row['final_psnr']:.2f} dB, SSIM {row['final_ssim']:.3f}, "
                      f"pose-swap drop {row['pose_swap_drop_db']:.2f} dB, {row['seconds']:.0f} s training")
        if world.is_main:
            if not trivial:
                trivial = _trivial(exp, None, store, version)
            settings = {"experiment": exp.name, "variants": exp.variants,
                        "models": {v: settings_dict(exp.model_spec(v))["ModelSpec"] for v in exp.variants},
                        **settings_dict(exp.data, exp.optim, exp.train), "loss": finals[-1]["loss"] if finals else None,
                        "world_size": world.size}
            summary = write_report(out_dir, finals, trivial, run_dirs, exp.reach_psnr, settings, _provenance(finals, exp))
            print(summary[["variant", "steps", "seconds", "final_psnr", "final_ssim", "best_trivial_psnr",
                           "pose_swap_drop_db"]].to_string(index=False))
            return summary
    finally:
        close_world(world)
    return None


def _trivial(exp: ConvergenceExperiment, result: RunResult | None, store: RecordStore, version: str) -> dict[str, dict]:
    """Scores of the camera-ignoring predictors, computed once per data setting and recorded."""
    key = point_key(exp.name, {"trivial": settings_dict(exp.data), "sigmas": exp.blur_sigmas}, version)
    for row in store.rows():
        if row.get("key") == key:
            return row["predictors"]
    if result is not None:
        split = result.eval_split
    else:
        from .data import evaluation_split, open_sources
        split = evaluation_split(open_sources(exp.data)[1], exp.data, batch_size=max(exp.train.batch_size, 8))
    predictors = trivial_baselines(split, exp.blur_sigmas)
    for name, value in predictors.items():
        extra = f" (sigma {value['sigma']:g} px)" if "sigma" in value else ""
        print(f"camera-ignoring predictor {name}{extra}: PSNR {value['psnr']:.2f} dB, SSIM {value['ssim']:.3f}")
    store.append({"kind": "trivial", "key": key, "predictors": predictors})
    return predictors


@register_kind("train", TrainExperiment)
def run_train(exp: TrainExperiment, preset: str | None = None, progress: bool = True, **_: Any):
    if preset:
        exp.model.preset = preset
        exp.__post_init__()
    world = init_world(exp.train.device)
    try:
        result = train_model(exp.model, exp.data, exp.optim, exp.train, exp.results_dir(), world=world,
                             progress=progress, label=exp.model.name)
        if world.is_main:
            row = final_row(exp.model.name, result)
            Path(exp.results_dir(), "final.json").write_text(json.dumps(row, indent=2, default=str) + "\n")
            print(f"{exp.model.name}: step {row['steps']}, PSNR {row['final_psnr']:.2f} dB, SSIM {row['final_ssim']:.3f}, "
                  f"pose-swap drop {row['pose_swap_drop_db']:.2f} dB, loss {row['loss']}")
            return row
    finally:
        close_world(world)
    return None
