"""Image-quality evaluation: models (registry name + preset, or a checkpoint of ours or an official
one) render the target views of an evaluation index; PSNR/SSIM/LPIPS per view and the per-scene means
are recorded as they are computed (a rerun resumes), and the summary (mean over scenes) is rebuilt
from the records into Markdown/CSV/LaTeX tables, beside the published numbers the experiment names,
plus a PNG grid of inputs, ground truth and every model's render for a few scenes."""
from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Literal

import pandas as pd
import torch
from tqdm import tqdm

from .checkpoint import is_our_checkpoint, load_checkpoint
from .experiment import ExperimentError, Experiment, Published, check_choice, load_experiment, register_kind
from .metrics import METRICS, LPIPSMetric, image_metrics, mean_over_scenes, scene_means
from .provenance import code_version, environment
from .records import RecordStore, point_key, write_atomic
from .runtime import DTYPES, autocast, default_dtype, resolve_device
from .tables import write_tables

RANDOM_INIT = "random-init"


@dataclass
class ModelSpec:
    name: str
    preset: str = "small"
    checkpoint: str = ""  # ours or official; empty: freshly initialised (labelled random-init)
    label: str = ""

    def __post_init__(self) -> None:
        from models import PRESETS, list_models
        check_choice(self.name, list_models(), "models[].name")
        check_choice(self.preset, sorted(PRESETS), f"models[{self.name}].preset")


@dataclass
class DataSpec:
    source: str = "synthetic_scene"
    options: dict[str, Any] = field(default_factory=dict)  # open_source keywords; strings may use $ENV_VARS
    index: str = ""  # evaluation index JSON ($ENV_VARS allowed); empty: drawn by make_evaluation_index
    n_input: int = 2
    n_target: int = 3
    seed: int = 0
    normalize: bool = True  # scene pose normalization, as the LVSM loader does
    max_scenes: int = 0  # 0: every scene of the index, else its first N
    requires: str = ""  # what to tell the user when a path above is unset or missing


@dataclass
class EvaluateExperiment(Experiment):
    models: list[ModelSpec] = field(default_factory=list)
    data: DataSpec = field(default_factory=DataSpec)
    lpips_net: Literal["vgg", "alex"] = "vgg"
    lpips_backbone: str = ""  # file or folder; empty: torchvision's cache $TORCH_HOME/hub/checkpoints/
    device: str = "auto"
    dtype: str = ""  # empty: bfloat16 autocast on CUDA, float32 on CPU
    batch_size: int = 1  # scenes per forward pass
    seed: int = 0  # initialisation seed of random-init models
    grid_scenes: int = 3
    published: Published | None = None

    def __post_init__(self) -> None:
        if not self.models:
            raise ExperimentError(f"{self.name}: key 'models': expected at least one model")
        if self.dtype:
            check_choice(self.dtype, sorted(DTYPES), "dtype")
        labels = [label_of(m, self.models) for m in self.models]
        duplicates = sorted({x for x in labels if labels.count(x) > 1})
        if duplicates:
            raise ExperimentError(f"{self.name}: models: label {duplicates[0]!r} used twice; give each a distinct 'label'")
        for key in ("batch_size", "grid_scenes"):
            if getattr(self, key) < (1 if key == "batch_size" else 0):
                raise ExperimentError(f"{self.name}: key {key!r}: expected a positive int, got {getattr(self, key)}")


def label_of(spec: ModelSpec, all_specs: list[ModelSpec]) -> str:
    if spec.label:
        return spec.label
    same_name = [s for s in all_specs if s.name == spec.name]
    if len(same_name) > 1 and spec.checkpoint:
        return f"{spec.name}@{Path(spec.checkpoint).stem}"
    return spec.name


class DataUnavailable(Exception):
    """The experiment's data (a root folder or an index file) is not there: nothing can be evaluated."""


def _expand(value: Any) -> Any:
    return os.path.expandvars(value) if isinstance(value, str) else value


def _check_path(key: str, raw: str, spec: DataSpec) -> str:
    value = _expand(raw)
    reason = ""
    if not value or "$" in value:
        reason = f"{key} is not set ({raw!r})"
    elif not Path(value).exists():
        reason = f"{key} {value} does not exist"
    if reason:
        raise DataUnavailable(reason + (f". {spec.requires}" if spec.requires else ""))
    return value


@dataclass
class ResolvedData:
    source: Any
    index: dict[str, dict[str, list[int]]]  # present scenes only, limited to max_scenes
    identity: dict[str, Any]  # what the resume key pins about the data
    not_in_source: int  # indexed scenes the source lacks (a partial download)


def resolve_data(spec: DataSpec) -> ResolvedData:
    """Open the source and the evaluation index."""
    from .data import load_evaluation_index, make_evaluation_index, open_source
    options = {}
    for key, value in spec.options.items():
        raw_is_path = isinstance(value, str) and ("$" in value or key in ("root", "path"))
        options[key] = _check_path(f"data.options.{key}", value, spec) if raw_is_path else _expand(value)
    source = open_source(spec.source, **options)
    if spec.index:
        index_path = _check_path("data.index", spec.index, spec)
        index = load_evaluation_index(index_path)
        index_id = {"file": str(Path(index_path).resolve()), "sha1": _file_sha1(index_path)}
    else:
        index = make_evaluation_index(source, n_input=spec.n_input, n_target=spec.n_target, seed=spec.seed)
        index_id = {"drawn": {"n_input": spec.n_input, "n_target": spec.n_target, "seed": spec.seed}}
    index = {k: v for k, v in index.items() if v}
    # A partial download evaluates the scenes it has; the notes say how many the index named.
    missing = [k for k in index if source.index_of(k) is None]
    index = {k: v for k, v in index.items() if source.index_of(k) is not None}
    if spec.max_scenes:
        index = dict(list(index.items())[:spec.max_scenes])
    if not index:
        raise ExperimentError(f"data: the evaluation index selects no scenes of source {spec.source!r}"
                              + (f" ({len(missing)} indexed scenes are not in it, e.g. {missing[0]!r})" if missing else ""))
    identity = {"source": spec.source, "options": options, "index": index_id, "normalize": spec.normalize}
    return ResolvedData(source, index, identity, len(missing))


def _file_sha1(path: str | Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _file_identity(path: str | Path) -> str:
    """Cheap identity of a (possibly huge) checkpoint: a changed file is evaluated again."""
    stat = Path(path).stat()
    return hashlib.sha1(f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


@dataclass
class LoadedModel:
    label: str
    model: torch.nn.Module
    info: dict[str, Any]  # table/record columns: model, variant, preset, weights, checkpoint
    identity: dict[str, Any]  # what the resume key pins


def load_model(spec: ModelSpec, label: str, device: torch.device, seed: int) -> LoadedModel:
    from models import build_model
    if spec.checkpoint:
        path = _expand(spec.checkpoint)
        model, meta = load_checkpoint(path, model_name=spec.name, device=device)
        weights = meta.weights_label
        preset = meta.preset or "from checkpoint"
        identity = {"checkpoint": _file_identity(path)}
        checkpoint = str(path)
    else:
        torch.manual_seed(seed)
        model = build_model(spec.name, spec.preset).to(device).eval()
        weights, preset, checkpoint = RANDOM_INIT, spec.preset, ""
        identity = {"random_init_seed": seed, "preset": spec.preset}
    info = {"model": label, "variant": spec.name, "preset": preset, "weights": weights, "checkpoint": checkpoint}
    return LoadedModel(label, model, info, {"model": label, "variant": spec.name, **identity})


def _render(model: torch.nn.Module, batch: dict[str, Any], device: torch.device, dtype: str) -> torch.Tensor:
    args = [batch[k].to(device) for k in ("input_images", "input_c2w", "input_fxfycxcy", "target_c2w", "target_fxfycxcy")]
    with torch.no_grad(), autocast(device, dtype):
        return model(*args).float()


def _batches(examples: Iterable[Any], size: int) -> Iterable[list[Any]]:
    """Consecutive examples of equal view counts, at most `size` together (collate stacks tensors)."""
    group: list[Any] = []
    for ex in examples:
        if group and (len(group) == size or ex.input_images.shape != group[0].input_images.shape
                      or ex.target_images.shape != group[0].target_images.shape):
            yield group
            group = []
        group.append(ex)
    if group:
        yield group


@dataclass
class EvaluationResult:
    summary: pd.DataFrame
    per_scene: pd.DataFrame
    paths: dict[str, Path]
    computed: int  # (model, scene) pairs evaluated by this call; resumed ones are not counted
    failed: int


class Evaluation:
    """One evaluation run: resolves device, data, metrics and models, then evaluates what the records lack."""

    def __init__(self, experiment: EvaluateExperiment, progress: bool = True):
        self.experiment = experiment
        self.progress = progress
        self.device = resolve_device(experiment.device)
        self.dtype = experiment.dtype or default_dtype(self.device)
        self.out_dir = experiment.results_dir()
        self.store = RecordStore(self.out_dir / "records.jsonl")
        self.version = code_version()
        self.data = resolve_data(experiment.data)
        self.source, self.index, self.data_identity = self.data.source, self.data.index, self.data.identity
        self.lpips = LPIPSMetric(experiment.lpips_net, self.device, experiment.lpips_backbone or None)
        self.labels = [label_of(m, experiment.models) for m in experiment.models]
        self.environment = environment(self.device)

    def scene_key(self, model_identity: dict[str, Any], scene: str) -> str:
        point = {**model_identity, "data": self.data_identity, "scene": scene, "views": self.index[scene],
                 "dtype": self.dtype, "lpips": self.lpips.label}
        return point_key(self.experiment.name, point, self.version)

    def run(self) -> EvaluationResult:
        done = self.store.done_keys()
        computed = failed = 0
        current_keys: dict[str, str] = {}  # scene-row key -> model label, for the tables
        grid_renders: dict[tuple[str, str], torch.Tensor] = {}
        for spec, label in zip(self.experiment.models, self.labels):
            loaded = load_model(spec, label, self.device, self.experiment.seed)
            keys = {scene: self.scene_key(loaded.identity, scene) for scene in self.index}
            current_keys.update({k: label for k in keys.values()})
            pending = [s for s in self.index if keys[s] not in done]
            n_ok, n_failed = self._evaluate_model(loaded, pending, keys)
            computed += n_ok + n_failed
            failed += n_failed
            grid_renders.update(self._grid_renders(loaded))
            del loaded
        per_scene, summary = self.tables(current_keys)
        paths = self.write_outputs(per_scene, summary, grid_renders)
        return EvaluationResult(summary, per_scene, paths, computed, failed)

    def _examples(self, scenes: list[str]) -> Iterable[Any]:
        from .data import evaluation_examples
        return evaluation_examples(self.source, {s: self.index[s] for s in scenes}, normalize=self.experiment.data.normalize)

    def _evaluate_model(self, loaded: LoadedModel, pending: list[str], keys: dict[str, str]) -> tuple[int, int]:
        from .data import collate
        n_ok = n_failed = 0
        if not pending:
            return 0, 0
        bar = tqdm(total=len(pending), desc=f"evaluate {loaded.label}", unit="scene", disable=not self.progress)
        for group in _batches(self._examples(pending), self.experiment.batch_size):
            try:
                batch = collate(group)
                renders = _render(loaded.model, batch, self.device, self.dtype)
                for ex, render in zip(group, renders):
                    self._record_scene(loaded, ex, render, keys[ex.scene])
                n_ok += len(group)
            except Exception as error:  # noqa: BLE001  (one failing point is recorded; the run goes on)
                for ex in group:
                    self.store.append(self._base_row(loaded, ex.scene, keys[ex.scene]) | {
                        "row": "scene", "status": "error", "error": f"{type(error).__name__}: {error}"})
                n_failed += len(group)
            bar.update(len(group))
        bar.close()
        return n_ok, n_failed

    def _base_row(self, loaded: LoadedModel, scene: str, key: str) -> dict[str, Any]:
        return {"key": key, "experiment": self.experiment.name, "scene": scene, **loaded.info, "dtype": self.dtype,
                "data_source": self.experiment.data.source, "lpips_net": self.lpips.label,
                "context": self.index[scene]["context"], "target": self.index[scene]["target"], **self.environment}

    def _record_scene(self, loaded: LoadedModel, ex: Any, render: torch.Tensor, key: str) -> None:
        base = self._base_row(loaded, ex.scene, key)
        views = image_metrics(render, ex.target_images.to(render.device), self.lpips)
        view_rows = []
        for view_index, values in zip(ex.target_indices, views):
            view_key = point_key(self.experiment.name, {"scene_key": key, "view": int(view_index)}, self.version)
            view_rows.append(base | values | {"key": view_key, "row": "view", "view": int(view_index), "status": "ok"})
            self.store.append(view_rows[-1])
        means = scene_means(view_rows).iloc[0]
        self.store.append(base | {m: _none_if_nan(means[m]) for m in METRICS} | {
            "row": "scene", "targets": int(means["targets"]), "status": "ok"})

    def _grid_renders(self, loaded: LoadedModel) -> dict[tuple[str, str], torch.Tensor]:
        from .data import collate
        scenes = list(self.index)[:self.experiment.grid_scenes]
        out = {}
        for ex in self._examples(scenes):
            try:
                out[(loaded.label, ex.scene)] = _render(loaded.model, collate([ex]), self.device, self.dtype)[0, 0].cpu()
            except Exception:  # noqa: BLE001  (its failure is already in the records; the grid shows a blank)
                continue
        return out

    # ------------------------------------------------------------------------------------- outputs

    def tables(self, current_keys: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Rebuilt from the records, never from memory: only rows of this run's points count."""
        latest = self.store.latest_by_key()
        scene_rows = [latest[k] for k in current_keys if k in latest and latest[k].get("row") == "scene"]
        ok = [r for r in scene_rows if r.get("status") == "ok"]
        info_columns = ["model", "variant", "weights", "preset", "checkpoint", "dtype", "device", "commit"]
        per_scene = pd.DataFrame(ok, columns=["model", "scene", *METRICS, "targets", "weights", "dtype", "device", "commit"])
        summary = mean_over_scenes(ok) if ok else pd.DataFrame(columns=["model", *METRICS, "scenes"])
        failed = pd.Series([r["model"] for r in scene_rows if r.get("status") != "ok"], dtype=object).value_counts()
        info = {}
        for row in ok:
            info[row["model"]] = {c: row.get(c) for c in info_columns}
        rows = []
        for label in self.labels:
            if label not in info:
                continue
            base = info[label]
            sums = summary[summary["model"] == label].iloc[0]
            rows.append({
                "model": label, "weights": base["weights"], "preset": base["preset"],
                **{m: _none_if_nan(sums[m]) for m in METRICS}, "scenes": int(sums["scenes"]),
                "failed": int(failed.get(label, 0)),
                "source": f"measured: {base['device']}, {base['dtype']}, commit {base['commit']}",
            })
        summary = pd.DataFrame(rows, columns=["model", "weights", "preset", *METRICS, "scenes", "failed", "source"])
        return per_scene, summary

    def with_published(self, summary: pd.DataFrame) -> pd.DataFrame:
        published = self.experiment.published
        if not published or not published.rows:
            return summary
        rows = [{"model": r.get("model", "?"), "weights": "published", "preset": r.get("preset"),
                 **{m: r.get(m) for m in METRICS}, "scenes": r.get("scenes"), "failed": None,
                 "source": f"published: {r.get('source', published.source)}"} for r in published.rows]
        return pd.concat([summary, pd.DataFrame(rows, columns=summary.columns)], ignore_index=True)

    def notes(self) -> list[str]:
        data = self.experiment.data
        options = ", ".join(f"{k}={v}" for k, v in self.data_identity["options"].items())
        index = self.data_identity["index"]
        index_text = index.get("file") or f"drawn ({data.n_input} inputs, {data.n_target} targets, seed {data.seed})"
        notes = [
            f"Measured rows: dataset {data.source} ({options}), {len(self.index)} scenes, evaluation index {index_text}",
            *([f"{self.data.not_in_source} scenes of the index are not in the source and were not evaluated"]
              if self.data.not_in_source else []),
            f"device {self.environment['device']}, dtype {self.dtype}, torch {self.environment['torch']}, commit {self.environment['commit']}",
            "Protocol (pixelSplat/MVSplat/LVSM): PSNR on [0,1]-clamped images; SSIM skimage win 11, gaussian, "
            "data_range 1; LPIPS normalize=True; mean over each scene's targets, then over scenes",
            f"LPIPS: {self.lpips.message}",
        ]
        if any(r == RANDOM_INIT for r in self._weights()):
            notes.append("weights 'random-init': freshly initialised models (no checkpoint); their numbers say nothing "
                         "about the trained models")
        if self.experiment.published and self.experiment.published.rows:
            notes.append(f"Published rows: {self.experiment.published.source}; not measured here")
        return notes

    def _weights(self) -> list[str]:
        return [RANDOM_INIT if not m.checkpoint else "checkpoint" for m in self.experiment.models]

    def write_outputs(self, per_scene: pd.DataFrame, summary: pd.DataFrame,
                      grid_renders: dict[tuple[str, str], torch.Tensor]) -> dict[str, Path]:
        title = f"{self.experiment.name}: image quality ({self.experiment.data.source})"
        paths = write_tables(self.with_published(summary), self.out_dir, "summary", title, self.notes())
        paths["per_scene"] = self.out_dir / "per_scene.csv"
        write_atomic(paths["per_scene"], per_scene.to_csv(index=False, na_rep="n/a"))
        if self.experiment.grid_scenes and grid_renders:
            paths["grid"] = self.save_grid(grid_renders)
        return paths

    def save_grid(self, renders: dict[tuple[str, str], torch.Tensor]) -> Path:
        from .plots import plt, save_figure
        scenes = list(self.index)[:self.experiment.grid_scenes]
        examples = {ex.scene: ex for ex in self._examples(scenes)}
        n_input = max(ex.input_images.shape[0] for ex in examples.values())
        columns = [f"input {i + 1}" for i in range(n_input)] + ["ground truth"] + self.labels
        fig, axes = plt.subplots(len(scenes), len(columns), figsize=(1.5 * len(columns), 1.5 * len(scenes)), squeeze=False)
        for r, scene in enumerate(scenes):
            ex = examples[scene]
            images = list(ex.input_images) + [ex.target_images[0]] + [renders.get((label, scene)) for label in self.labels]
            for c, image in enumerate(images):
                ax = axes[r, c]
                ax.axis("off")
                if image is not None:
                    ax.imshow(image.clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest")
                if r == 0:
                    ax.set_title(columns[c], fontsize=6)
            axes[r, 0].text(-0.08, 0.5, scene, transform=axes[r, 0].transAxes, fontsize=5, rotation=90,
                            ha="right", va="center")
        weights = dict(zip(self.labels, self._weights()))
        fig.suptitle(f"{self.experiment.name}: first target view; models: "
                     + ", ".join(f"{k} ({v})" for k, v in weights.items()), fontsize=7)
        return save_figure(fig, self.out_dir / "grid.png", dpi=100)


def _none_if_nan(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and value != value) else float(value)


def with_checkpoints(experiment: EvaluateExperiment, checkpoints: list[str]) -> EvaluateExperiment:
    """`[MODEL=]PATH` items replace the experiment's model list (our checkpoints name their model;
    official ones need MODEL=)."""
    if not checkpoints:
        return experiment
    specs = []
    for item in checkpoints:
        name, _, path = item.rpartition("=") if "=" in item else ("", "", item)
        path = _expand(path)
        if not Path(path).is_file():
            raise FileNotFoundError(f"--checkpoint {item}: file {path} not found")
        if not name:
            obj = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
            if not is_our_checkpoint(obj):
                raise ExperimentError(f"--checkpoint {item}: not an lvsm-bench checkpoint; for an official one write MODEL={path}")
            name = obj["model"]
        specs.append(ModelSpec(name=name, checkpoint=path))
    return replace(experiment, models=specs)


def with_preset(experiment: EvaluateExperiment, preset: str | None) -> EvaluateExperiment:
    if not preset:
        return experiment
    return replace(experiment, models=[m if m.checkpoint else replace(m, preset=preset) for m in experiment.models])


@register_kind("evaluate", EvaluateExperiment)
def run_evaluation(experiment: EvaluateExperiment, preset: str | None = None, checkpoints: list[str] | None = None,
                   progress: bool = True) -> EvaluationResult | None:
    experiment = with_preset(with_checkpoints(experiment, checkpoints or []), preset)
    try:
        evaluation = Evaluation(experiment, progress=progress)
    except DataUnavailable as missing:
        print(f"{experiment.name}: not run: {missing}")
        return None
    result = evaluation.run()
    print(f"{experiment.name}: {result.computed} scene evaluations computed ({result.failed} failed), "
          f"the rest resumed from {evaluation.store.path}")
    print(f"summary: {result.paths['md']}")
    return result


def main_from_cli(args: argparse.Namespace) -> int:
    experiment = load_experiment(args.experiment, args.set)
    if not isinstance(experiment, EvaluateExperiment):
        raise ExperimentError(f"{args.experiment}: kind {experiment.kind!r}; `evaluate` needs an experiment of kind 'evaluate'")
    run_evaluation(experiment, preset=args.preset, checkpoints=args.checkpoint)
    return 0
