"""Experiment kinds `train` (one model) and `convergence` (several variants, one budget), on the
shared pipeline: each trained variant is one point of `rows.jsonl` (its final validation, pose-swap
drop and timing), and so are the camera-ignoring predictors every variant must beat and each arm's
cost. A point trains in `runs/<variant>/` (checkpoint and training log), so an interrupted run resumes
mid-training. The tables and figures are built in `summary` and `figures`.

Both run as one process or under `torchrun`: the runs (arms x seeds) go one after another, each trained
by every rank together with DistributedDataParallel (each rank a share of every batch, the global batch
`batch_size` x ranks); rank 0 records, validates, measures the arms' cost and writes. An `ablations`
or `depth_study` experiment is a `convergence` one and runs the same way."""
from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from models import label, model_config

from ..pipeline import Report, Sweep, Table, write_manifest, write_report
from ..report import Setting, measured_setting, shared_sizes
from ..provenance import device_name, environment, measured_by
from ..runtime import resolve_device
from ..errors import ConfigError
from ..schema import Kind, RunOptions, load_experiment, with_preset
from .config import Arm, ConvergenceExperiment, TrainExperiment, settings_dict
from ..distributed import current_world
from .figures import save_renders
from .loop import Trainer
from .summary import SUMMARY_COLUMNS, convergence_report, final_columns, provenance
from .validation import trivial_baselines
from ..weights import check_replaceable, ship

log = logging.getLogger(__name__)


def measure_cost(exp: ConvergenceExperiment, arm_name: str) -> dict[str, Any]:
    """Parameters, forward FLOPs and latency of one arm at its trained size (random weights: cost does not
    depend on values)."""
    import torch

    from models import build_model
    from ..profile.measure import FlopCounter, Sizes, measure_call, synthetic_views
    from ..runtime import resolve_device
    from ..schema import Measurement
    spec = exp.model_spec(arm_name)
    model = build_model(spec.name, spec.preset, **spec.overrides)
    config, n, m = model.config, exp.cost.n_input, exp.cost.n_target
    flops = FlopCounter(Sizes(spec.preset, spec.overrides)).forward(spec.name, n, m)
    threads = torch.get_num_threads()
    torch.set_num_threads(exp.cost.threads)
    try:
        device = resolve_device(exp.train.device)
        model = model.to(device).eval()
        views = synthetic_views(1, n, m, config.image_size, device)
        timing = measure_call(lambda: model(*views), device, "float32",
                              Measurement(warmup=2, runs=exp.cost.runs, min_runs=exp.cost.runs))
        # Named while the timing's threads are set: the sweep's context names the process's own count.
        timed_on = device_name(device)
    finally:
        torch.set_num_threads(threads)
    return {"params": model.num_parameters(), "gflops": flops.counted / 1e9, "latency_ms": timing["latency_ms"],
            "latency_iqr_ms": timing["latency_iqr_ms"], "noisy": timing["noisy"], "device": timed_on,
            "threads": exp.cost.threads, **({"numerics": numerics} if (numerics := model.numerics(device)) else {})}


def measure_step_costs(exp: ConvergenceExperiment, arm_names: list[str]) -> dict[str, Any]:
    """The clean cost of a training step of each arm: the arms' steps (forward, loss, backward, clipping,
    optimizer step) timed in turn round after round on one batch of the training shape, at the training
    threads, once training has ended (random weights and inputs: cost does not depend on values). Wall
    clock during training rides whatever else ran; this is what a step costs. Median and IQR per arm."""
    import torch

    from models import build_model
    from ..profile.measure import Contention, interleaved_ms, median_iqr, synthetic_views
    from .loop import TrainStep
    from .loss import ReconstructionLoss
    from .optim import build_optimizer, build_scheduler
    device, data = resolve_device(exp.train.device), exp.data
    threads = torch.get_num_threads()
    torch.set_num_threads(exp.train.threads or threads)
    try:
        views = synthetic_views(exp.train.batch_size, data.n_input, data.n_target, data.image_size, device)
        names = ("input_images", "input_c2w", "input_fxfycxcy", "target_c2w", "target_fxfycxcy")
        batch = {**dict(zip(names, views)), "target_images": torch.rand(exp.train.batch_size, data.n_target, 3,
                                                                        data.image_size, data.image_size, device=device)}
        calls, numerics = [], {}
        for name in arm_names:
            spec, train = exp.model_spec(name), exp.train_spec(name, exp.run_seeds()[0])
            torch.manual_seed(0)
            model = build_model(spec.name, spec.preset, **spec.overrides).to(device).train()
            optimizer = build_optimizer(model, exp.optim, device)
            scheduler = build_scheduler(optimizer, exp.optim, train.steps)
            criterion = ReconstructionLoss(train.perceptual_weight, device)
            step = TrainStep(model, model, criterion, optimizer, scheduler, exp.optim.grad_clip, device, "float32")
            calls.append(lambda step=step: step(batch))
            if choice := model.numerics(device):  # a kernel choice changes what a step costs
                numerics[name] = choice
        with Contention(device) as contention:
            times = interleaved_ms(calls, device, exp.step_cost_rounds, warmup=2)
        timed_on = device_name(device)  # as in measure_cost
    finally:
        torch.set_num_threads(threads)
    stats = {name: median_iqr(t) for name, t in zip(arm_names, times)}
    return {"step_ms": {n: v[0] for n, v in stats.items()}, "step_iqr_ms": {n: v[1] for n, v in stats.items()},
            "rounds": len(times[0]), **contention.columns, "device": timed_on, **({"numerics": numerics} if numerics else {})}


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


def check_shippable(exp: ConvergenceExperiment, options: RunOptions) -> None:
    """Shipping writes into the repository what `make eval` evaluates as this study's models, so only the
    study as its file defines it ships (an output folder of its own aside), and never over shipped weights
    of another model config unless forced. Checked before any training; one line otherwise."""
    if not exp.ship_weights:
        raise ConfigError(f"{exp.name}: --ship-weights: the experiment names no ship_weights folder")
    study = with_preset(load_experiment(exp.source_file), None) if exp.source_file else None
    ours = exp.model_dump(exclude={"output_dir"})
    theirs = study.model_dump(exclude={"output_dir"}) if study else {}
    changed = sorted(key for key in ours if ours[key] != theirs.get(key))
    if changed:
        raise ConfigError(f"{exp.name}: --ship-weights: this run is not the study {exp.source_file or '(no file)'} defines "
                          f"(changed: {', '.join(changed)}); shipped weights come only from the study as its file defines "
                          "it: drop --preset/--set, or drop --ship-weights (the weights then stay in the run's runs/ folder)")
    if not options.force_ship:
        for arm in exp.study_arms():
            spec = exp.model_spec(arm)
            check_replaceable(Path(exp.ship_weights), f"{arm.name}.pt", spec.name, spec.config().to_dict())


def _settings_match(recorded_settings: dict[str, Any], asked: dict[str, Any], defaults: dict[str, Any]) -> bool:
    from .loop import _same_settings
    try:
        _same_settings(recorded_settings, asked, defaults, Path("records"))
    except ConfigError:
        return False
    return True


def recorded(exp: ConvergenceExperiment, sweep: Sweep, points: list[dict[str, Any]],
             train_missing: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`--from-records`: for each trained run, the latest `ok` row recorded for the same arm and seed,
    whatever code version recorded it, provided it was trained with the settings the experiment asks for
    (an option the row predates counts as its default; a run recorded with other settings is refused in one
    line). A run not recorded at all is left out of the tables, which list it as not trained yet: a long study
    is read while it trains (nothing recorded at all is refused). With `train_missing` (`--keep-recorded`)
    such a run is left to train instead. Cost and predictor points reuse a row of the same arm (cost) or data
    (predictors) where one exists. Returns (rows found, points left to measure)."""
    from .config import settings_defaults
    from .loop import _same_settings
    rows = [r for r in sweep.store.rows() if r.get("status") == "ok"]
    found, missing = [], []
    for point in points:
        if "arm" in point:
            match = [r for r in rows if r.get("arm") == point["arm"] and r.get("seed") == point["seed"] and "settings" in r]
            what = f"arm {point['arm']} seed {point['seed']}"
            spec, train = exp.model_spec(point["arm"]), exp.train_spec(point["arm"], point["seed"])
            if train_missing:
                match = [r for r in match if _settings_match(r["settings"], point["settings"],
                                                             settings_defaults(spec, exp.data, exp.optim, train))]
                (found.append(match[-1]) if match else missing.append(point))
                continue
            if not match:
                continue  # not trained yet: convergence_tables lists it
            try:
                _same_settings(match[-1]["settings"], point["settings"], settings_defaults(spec, exp.data, exp.optim, train),
                               sweep.store.path)
            except ConfigError as error:
                raise ConfigError(f"{exp.name}: --from-records: the recorded {what} {str(error).split(': ', 1)[1].split(';')[0]}; "
                                  "run without --from-records to train it with these settings") from None
        elif "cost" in point:
            match = [r for r in rows if r.get("cost") == point["cost"] and r.get("at") == point["at"]]
        else:
            match = [r for r in rows if "trivial" in r and r["trivial"] == point["trivial"]]
        (found.append(match[-1]) if match else missing.append(point))
    if not train_missing and not any("arm" in r for r in found) and any("arm" in p for p in points):
        raise ConfigError(f"{exp.name}: --from-records: no run of this study is recorded in {sweep.store.path}; "
                          "run without --from-records to train them")
    return found, missing


def study_setting(exp: ConvergenceExperiment | TrainExperiment, rows: list[dict[str, Any]]) -> Setting:
    """Where a training study's numbers come from: the training device, the sizes its arms share, the data
    and views it trains and validates on, and its budget."""
    arms = exp.study_arms() if isinstance(exp, ConvergenceExperiment) else [exp.model]
    specs = [exp.model_spec(arm) if isinstance(exp, ConvergenceExperiment) else arm for arm in arms]
    sizes = shared_sizes(model_config(spec.name, spec.preset, **spec.overrides).to_dict() for spec in specs)
    data = exp.data
    return measured_setting(
        [r for r in rows if "arm" in r or "variant" in r],
        model={"preset": specs[0].preset if len({s.preset for s in specs}) == 1 else None, **sizes},
        views={"n_input": data.eval_n_input or data.n_input, "n_target": data.eval_n_target},
        data={"source": data.source, "protocol": data.protocol, "scenes": data.eval_scenes},
        training={"steps": exp.train.steps, "batch": exp.train.batch_size,
                  "seeds": exp.run_seeds() if isinstance(exp, ConvergenceExperiment) else [exp.train.seed]})


def convergence_code(exp: ConvergenceExperiment, point: dict[str, Any]) -> tuple[str, ...]:
    """The modules whose code makes a convergence point's numbers: a trained run reads the data and trains
    its variant, the predictors read the data alone, the costs time their variants on synthetic views."""
    if "trivial" in point:
        return measured_by(__name__, sources=[exp.data.source])
    if "step_cost" in point:
        return measured_by(__name__, *(spec["name"] for spec in point["models"].values()))
    if "cost" in point:
        return measured_by(__name__, point["model"])
    return measured_by(__name__, point["model"], sources=[exp.data.source])


@dataclass
class ConvergencePlan:
    """What a convergence run measures: the arms that can train on this machine (and why others cannot),
    the seeds, each run's folder, and the sweep's points."""
    arms: list[Arm]
    seeds: list[int]
    skipped: list[str]
    run_dirs: dict[tuple[str, int], Path]
    train_points: list[dict[str, Any]]
    points: list[dict[str, Any]]


def plan_convergence(exp: ConvergenceExperiment) -> ConvergencePlan:
    skipped = [reason for reason in map(unavailable, exp.study_arms()) if reason]
    arms, seeds = [arm for arm in exp.study_arms() if not unavailable(arm)], exp.run_seeds()
    run_dirs = {(arm.name, seed): exp.run_dir(arm.name, seed) for arm in arms for seed in seeds}
    trivial_point = {"trivial": exp.data.model_dump(), "sigmas": list(exp.blur_sigmas)}
    # Seed-major: every arm's first seed is trained before any second seed.
    train_points = [{"arm": arm.name, "model": arm.model, "seed": seed,
                     "settings": settings_dict(exp.model_spec(arm), exp.data, exp.optim, exp.train_spec(arm, seed))}
                    for seed in seeds for arm in arms]
    cost_points = [{"cost": arm.name, "model": arm.model, "config": exp.model_spec(arm).model_dump(),
                    "at": exp.cost.model_dump()} for arm in arms]
    step_point = step_cost_point(exp, arms)
    points = [trivial_point, *train_points, *cost_points, *([step_point] if step_point else [])]
    return ConvergencePlan(arms, seeds, skipped, run_dirs, train_points, points)


def recorded_step_cost(sweep: Sweep, point: dict[str, Any]) -> dict[str, Any] | None:
    """Each arm's latest recorded step timing in the same setting (the same model, i.e. the config it builds
    whatever its preset is called; the same optimizer, batch, threads, views and rounds) on the device of the
    latest timing, whichever arms it was timed with; None when no arm has one. Arms without one are listed
    under `untimed`."""
    from .loop import _model_config
    ms: dict[str, float] = {}
    iqr: dict[str, float] = {}
    numerics: dict[str, dict[str, str]] = {}
    base: dict[str, Any] | None = None
    commits: set[str] = set()  # arms timed by different runs name every commit that timed one
    for row in reversed(sweep.store.rows()):
        if row.get("status") != "ok" or "step_cost" not in row or not all(
                json.dumps(row.get(k), sort_keys=True) == json.dumps(v, sort_keys=True)
                for k, v in point.items() if k not in ("models", "step_cost")):
            continue
        if base is not None and row.get("device") != base.get("device"):
            continue  # step costs stand side by side only as timed on one machine
        for name, spec in point["models"].items():
            if name not in ms and name in (row.get("step_ms") or {}) and \
                    _model_config(row.get("models", {}).get(name, {})) == _model_config(spec):
                ms[name], iqr[name] = row["step_ms"][name], (row.get("step_iqr_ms") or {}).get(name)
                if name in (row.get("numerics") or {}):
                    numerics[name] = row["numerics"][name]
                base = base or row
                commits.add(str(row.get("commit")))
    if base is None:
        return None
    return {**base, "commit": ", ".join(sorted(commits)), "step_cost": list(ms), "step_ms": ms, "step_iqr_ms": iqr,
            "numerics": numerics, "untimed": [name for name in point["step_cost"] if name not in ms]}


def step_cost_point(exp: ConvergenceExperiment, arms: list[Arm]) -> dict[str, Any] | None:
    """The point timing a training step of each arm; None when no arm is timed."""
    # REPA's teacher is not part of a step's cost here: such arms are left out of the step timing.
    timed_arms = [arm.name for arm in arms if not arm.train.get("repa")]
    if not timed_arms:
        return None
    return {"step_cost": timed_arms, "models": {name: exp.model_spec(name).model_dump() for name in timed_arms},
            "optim": exp.optim.model_dump(), "batch": exp.train.batch_size, "threads": exp.train.threads,
            "views": [exp.data.n_input, exp.data.n_target], "image_size": exp.data.image_size,
            "rounds": exp.step_cost_rounds}


def point_label(point: dict[str, Any]) -> str:
    if "trivial" in point:
        return "camera-ignoring predictors"
    if "step_cost" in point:
        return "clean cost of a training step"
    return f"cost {point['cost']}" if "cost" in point else f"{point['arm']} seed {point['seed']}"


def measure_point(exp: ConvergenceExperiment, plan: ConvergencePlan, options: RunOptions, out_dir: Path,
                  point: dict[str, Any]) -> dict[str, Any]:
    """One point of the sweep. Every rank trains; only rank 0 measures the rest and returns columns."""
    world = current_world()
    if "arm" in point:
        return train_arm(exp, plan, options, out_dir, exp.arm(point["arm"]), point["seed"])
    if not world.is_main:
        return {}
    if "trivial" in point:
        from .data import evaluation_split, open_sources
        split = evaluation_split(open_sources(exp.data)[1], exp.data, batch_size=max(exp.train.batch_size, 8))
        return {"predictors": trivial_baselines(split, exp.blur_sigmas)}
    if "cost" in point:
        return measure_cost(exp, point["cost"])
    return measure_step_costs(exp, point["step_cost"])


def train_arm(exp: ConvergenceExperiment, plan: ConvergencePlan, options: RunOptions, out_dir: Path, arm: Arm,
              seed: int) -> dict[str, Any]:
    world = current_world()
    result = Trainer(exp.model_spec(arm), exp.data, exp.optim, exp.train_spec(arm, seed), plan.run_dirs[arm.name, seed],
                     world=world, progress=options.progress, label=f"{arm.name} seed {seed}").fit()
    if not world.is_main:
        return {}
    if seed == plan.seeds[0]:
        save_renders(out_dir / f"renders_{arm.name}.png", result)
    columns = final_columns(result)
    log.info("%s seed %d: final PSNR %.2f dB, SSIM %.3f, pose-swap drop %.2f dB, %.0f s training", arm.name, seed,
             columns["final_psnr"], columns["final_ssim"], columns["pose_swap_drop_db"], columns["seconds"])
    return columns


def sweep_rows(exp: ConvergenceExperiment, sweep: Sweep, plan: ConvergencePlan, options: RunOptions) -> list[dict[str, Any]] | None:
    """Run the plan's points (those not recorded yet) and return every point's row; None on ranks other
    than 0. With `--from-records`, the rows are the recorded ones and only the clean step cost is measured."""
    measure = functools.partial(measure_point, exp, plan, options, sweep.out_dir)
    if not (options.from_records or options.keep_recorded):
        sweep.run(plan.points, measure, point_label, options.progress, unit="run")
        return sweep.rows(plan.points) if sweep.world.is_main else None
    if not sweep.world.is_main:
        return None
    kept, left = recorded(exp, sweep, [p for p in plan.points if "step_cost" not in p], train_missing=options.keep_recorded)
    step_costs = [p for p in plan.points if "step_cost" in p]
    if options.from_records:
        left = []  # measures nothing: a cost or predictor point not recorded yet stays n/a
        # The clean cost of a step is timed after training, on a quiet machine: a rebuild measures nothing and
        # takes each arm's recorded one (an arm with none keeps its wall-clock seconds and is named in the notes).
        kept += [row for p in step_costs if (row := recorded_step_cost(sweep, p))]
    else:
        left += step_costs
    sweep.run(left, measure, point_label, options.progress, unit="run")
    rows = kept + sweep.rows(left)
    write_manifest(sweep.out_dir, exp, {"rows_shown": [r["key"] for r in rows]})
    return rows


def convergence_tables(exp: ConvergenceExperiment, plan: ConvergencePlan, rows: list[dict[str, Any]],
                       options: RunOptions) -> tuple[Report, pd.DataFrame, int]:
    """The report and summary of the rows, with failures and skipped arms noted first; and how many of
    the planned runs have not finished."""
    ok = [r for r in rows if r["status"] == "ok"]
    trivial = next((r["predictors"] for r in ok if "trivial" in r), {})
    finals = [r for r in ok if "arm" in r]
    costs = {r["cost"]: r for r in ok if "cost" in r}
    step_costs = next((r for r in ok if "step_cost" in r), None)
    report, summary = convergence_report(exp, finals, trivial, costs, plan.run_dirs, step_costs)
    if options.from_records:
        line = "built from the recorded runs (--from-records): nothing retrained; each row keeps the commit that measured it"
        for notes in [report.notes, *(table.notes for table in report.tables)]:
            notes.insert(0, line)
    report.notes[:0] = [f"failed: {point_label(r)}: {r['error']}" for r in rows if r["status"] != "ok"] + plan.skipped
    report.not_run = list(plan.skipped) + [f"arm {p['arm']} seed {p['seed']}: not trained yet (rerun to resume)"
                                           for p in plan.train_points
                                           if not any(r.get("arm") == p["arm"] and r.get("seed") == p["seed"] for r in finals)]
    report.not_run.append("LPIPS: not scored during training (validation scores PSNR and SSIM); `make eval` scores the "
                          "trained weights with LPIPS where its VGG backbone file is present (see its page)")
    report.setting = study_setting(exp, rows)
    return report, summary, len(plan.train_points) - len(finals)


def place_weights(exp: ConvergenceExperiment, plan: ConvergencePlan, options: RunOptions, report: Report, out_dir: Path,
                  unfinished: int) -> None:
    """Ship the trained weights when every run finished and shipping was asked for; say where they are."""
    if unfinished:
        report.notes.insert(0, f"{unfinished} of {len(plan.train_points)} runs not finished yet (rerun to resume)")
    elif options.ship_weights:  # every run finished, and this run is the study its file defines
        shipped = ship({arm.name: plan.run_dirs[arm.name, plan.seeds[0]] / "checkpoint.pt" for arm in plan.arms}, exp.ship_weights,
                       trained_by=f"{exp.source_file or exp.name} (first seed)", dtype=exp.ship_dtype, force=options.force_ship)
        report.notes.append(f"weights shipped in {exp.ship_weights}/ (weights only, sha256 in its manifest.json)"
                            + (f"; refreshed: {', '.join(p.name for p in shipped)}" if shipped else ""))
        # What the run wrote outside its output folder, in its manifest.
        write_manifest(out_dir, exp, {"written_outside_output": [str(p) for p in shipped]})
    else:
        kept = f"trained weights kept in {exp.results_dir() / 'runs'}/"
        if exp.ship_weights:
            kept += f" ({exp.ship_weights}/ untouched: shipping them there is --ship-weights, as make convergence does)"
        report.notes.append(kept)
        log.info("%s: %s", exp.name, kept)


def run_convergence(exp: ConvergenceExperiment, options: RunOptions) -> pd.DataFrame | None:
    world = current_world()
    if options.ship_weights:
        check_shippable(exp, options)
    # Every row names the machine, also those of the predictors and costs (not only the trained runs).
    sweep = Sweep(exp.results_dir(), exp.name, together=True, context=environment(resolve_device(exp.train.device)),
                  code=lambda p: convergence_code(exp, p))
    plan = plan_convergence(exp)
    if world.is_main:
        for reason in plan.skipped:
            print(f"{exp.name}: {reason}")
        write_manifest(sweep.out_dir, exp)
        write_validation_index(exp, sweep.out_dir)
    rows = sweep_rows(exp, sweep, plan, options)
    if rows is None:
        return None
    report, summary, unfinished = convergence_tables(exp, plan, rows, options)
    place_weights(exp, plan, options, report, sweep.out_dir, unfinished)
    write_report(report, sweep.out_dir, exp, rows)
    return summary


# ------------------------------------------------------------------------------------------ train


def run_train(exp: TrainExperiment, options: RunOptions) -> dict[str, Any] | None:
    world = current_world()
    sweep = Sweep(exp.results_dir(), exp.name, together=True,
                  code=lambda p: measured_by(__name__, p["variant"], sources=[exp.data.source]))
    name = exp.model.name
    point = {"variant": name, "settings": settings_dict(exp.model, exp.data, exp.optim, exp.train)}
    write_manifest(sweep.out_dir, exp)

    def measure(point: dict[str, Any]) -> dict[str, Any]:
        result = Trainer(exp.model, exp.data, exp.optim, exp.train, sweep.out_dir, world=world,
                         progress=options.progress, label=name).fit()
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
                        [Table("final", f"{exp.name}: final validation", frame)], setting=study_setting(exp, [row])),
                 sweep.out_dir, exp, [row])
    return row


TRAIN = Kind(TrainExperiment, run_train, "train one model, resumable from its checkpoint")
CONVERGENCE = Kind(ConvergenceExperiment, run_convergence, "several variants trained on one budget: PSNR against steps and seconds",
                   reads=frozenset({"ship_weights", "force_ship", "from_records", "keep_recorded"}))
