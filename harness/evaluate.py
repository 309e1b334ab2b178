"""Kind `evaluate`: image quality of models (a registered variant at a preset, or a checkpoint of ours
or an official one) on an evaluation index of a data source.

Each (model, scene) is one point of the shared pipeline: its target views are rendered, PSNR / SSIM /
LPIPS computed per view, and one row (the per-view values and the scene means) appended to
`rows.jsonl` the moment it exists. A scene that fails (bad data or a model error) is recorded with its
reason and the run goes on; the summary lists the failures and the command exits 1; a rerun retries
only those. The summary (mean over scenes of the per-scene means, the protocol's number) is rebuilt
from the rows, beside the published numbers of the variants' cards and of other methods, plus a PNG
grid of inputs, ground truth and every model's render for a few scenes.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from pydantic import Field, model_validator
from tqdm import tqdm

from models import build_model, label as variant_label, list_models, model_card

from .checkpoint import is_our_checkpoint, load_checkpoint, read_torch_file
from .errors import CheckpointError, ConfigError, MissingResource
from .metrics import METRICS, LPIPSMetric, image_metrics, mean_over_scenes, scene_means
from .pipeline import Report, Sweep, Table, failure_status, one_line, release_memory, write_manifest, write_report
from .provenance import environment
from .records import write_atomic
from .runtime import autocast, default_dtype, resolve_device
from .schema import DataRef, Dtype, ExperimentBase, Kind, ModelRef, NonNegative, Positive, Published, RunOptions, Spec

log = logging.getLogger(__name__)
RANDOM_INIT = "random-init"


class EvalData(DataRef):
    index: str = ""  # evaluation index JSON ($ENV_VARS allowed); empty: drawn by make_evaluation_index
    max_scenes: NonNegative = 0  # 0: every scene of the index, else its first N
    requires: str = ""  # what to tell the user when a path above is unset or missing


class QualityRow(Spec):
    """A published method's numbers (variants registered here take theirs from their card)."""
    model: str
    psnr: float
    ssim: float | None = None
    lpips: float | None = None
    source: str = ""


class EvaluateSpec(ExperimentBase):
    kind: Literal["evaluate"]
    models: list[ModelRef] = Field(min_length=1)
    data: EvalData = EvalData()
    lpips_net: Literal["vgg", "alex"] = "vgg"
    lpips_backbone: str = ""  # file or folder; empty: torchvision's cache $TORCH_HOME/hub/checkpoints/
    device: str = "auto"
    dtype: Dtype = "auto"  # auto: bfloat16 autocast on CUDA, float32 on CPU
    batch_size: Positive = 1  # scenes per forward pass
    seed: int = 0  # initialisation seed of random-init models
    grid_scenes: NonNegative = 3
    card_table: str = ""  # the variants' card table printed beside ours (e.g. re10k)
    requires: str = ""  # how to provide a checkpoint that is not there (e.g. the make target that trains it)
    published: Published[QualityRow] | None = None

    @model_validator(mode="after")
    def _distinct_labels(self) -> "EvaluateSpec":
        labels = [label_of(m, self.models) for m in self.models]
        duplicates = sorted({x for x in labels if labels.count(x) > 1})
        if duplicates:
            raise ValueError(f"models: label {duplicates[0]!r} used twice; give each a distinct 'label'")
        return self


def label_of(spec: ModelRef, all_specs: list[ModelRef]) -> str:
    if spec.label:
        return spec.label
    same_name = [s for s in all_specs if s.name == spec.name]
    if len(same_name) > 1 and spec.checkpoint:
        return f"{spec.name}@{Path(spec.checkpoint).stem}"
    return spec.name


# ------------------------------------------------------------------------------------------ data


def _expand(value: Any) -> Any:
    return os.path.expandvars(value) if isinstance(value, str) else value


def _check_path(key: str, raw: str, spec: EvalData) -> str:
    value = _expand(raw)
    reason = ""
    if not value or "$" in value:
        reason = f"{key} is not set ({raw!r})"
    elif not Path(value).exists():
        reason = f"{key} {value} does not exist"
    if reason:
        raise MissingResource(reason + (f". {' '.join(spec.requires.split())}" if spec.requires else ""))
    return value


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
class ResolvedData:
    source: Any
    index: dict[str, dict[str, list[int]]]  # present scenes only, limited to max_scenes
    identity: dict[str, Any]  # what the resume key pins about the data
    not_in_source: int  # indexed scenes the source lacks (a partial download)


def resolve_data(spec: EvalData) -> ResolvedData:
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
        raise ConfigError(f"data: the evaluation index selects no scenes of source {spec.source!r}"
                          + (f" ({len(missing)} indexed scenes are not in it, e.g. {missing[0]!r})" if missing else ""))
    identity = {"source": spec.source, "options": options, "index": index_id, "normalize": spec.normalize}
    return ResolvedData(source, index, identity, len(missing))


# ---------------------------------------------------------------------------------------- models


@dataclass
class LoadedModel:
    label: str
    model: torch.nn.Module
    info: dict[str, Any]  # table/record columns: model, variant, preset, weights, checkpoint
    identity: dict[str, Any]  # what the resume key pins


def load_model(spec: ModelRef, label: str, device: torch.device, seed: int) -> LoadedModel:
    if spec.checkpoint:
        path = _expand(spec.checkpoint)
        model, meta = load_checkpoint(path, model_name=spec.name, device=device)
        weights, preset, checkpoint = meta.weights_label, meta.preset or "from checkpoint", str(path)
        identity = {"checkpoint": _file_identity(path)}
    else:
        torch.manual_seed(seed)
        model = build_model(spec.name, spec.preset, **spec.overrides).to(device).eval()
        weights, preset, checkpoint = RANDOM_INIT, spec.preset, ""
        identity = {"random_init_seed": seed, "preset": spec.preset, **({"overrides": spec.overrides} if spec.overrides else {})}
    info = {"model": label, "variant": spec.name, "preset": preset, "weights": weights, "checkpoint": checkpoint}
    return LoadedModel(label, model, info, {"model": label, "variant": spec.name, **identity})


def render(model: torch.nn.Module, batch: dict[str, Any], device: torch.device, dtype: str) -> torch.Tensor:
    args = [batch[k].to(device) for k in ("input_images", "input_c2w", "input_fxfycxcy", "target_c2w", "target_fxfycxcy")]
    with torch.no_grad(), autocast(device, dtype):
        return model(*args).float()


# ------------------------------------------------------------------------------------ evaluation


@dataclass
class EvaluationResult:
    summary: pd.DataFrame
    per_scene: pd.DataFrame
    paths: dict[str, Path]
    computed: int  # (model, scene) pairs evaluated by this call; resumed ones are not counted
    failed: int  # (model, scene) pairs whose latest row is a failure
    failures: list[str] = field(default_factory=list)


class Evaluation:
    """One evaluation run: resolves device, data, metrics and models, then evaluates what the rows lack."""

    def __init__(self, spec: EvaluateSpec, progress: bool = True):
        self.spec = spec
        self.progress = progress
        self.device = resolve_device(spec.device)
        self.dtype = default_dtype(self.device) if spec.dtype == "auto" else spec.dtype
        self.environment = environment(self.device)
        for model in spec.models:  # every checkpoint is there before anything is evaluated or written
            if model.checkpoint and not Path(_expand(model.checkpoint)).is_file():
                raise MissingResource(f"{spec.name}: checkpoint {_expand(model.checkpoint)} of {model.label or model.name} not found"
                                      + (f"; {' '.join(spec.requires.split())}" if spec.requires else ""))
        self.data = resolve_data(spec.data)  # before the output directory exists: missing data writes nothing
        self.sweep = Sweep(spec.results_dir(), spec.name, context=self.environment, skip=("ok",))
        self.index = self.data.index
        self.lpips = LPIPSMetric(spec.lpips_net, self.device, spec.lpips_backbone or None)
        self.labels = [label_of(m, spec.models) for m in spec.models]

    def point(self, identity: dict[str, Any], scene: str) -> dict[str, Any]:
        return {**identity, "data": self.data.identity, "scene": scene, "views": self.index[scene],
                "dtype": self.dtype, "lpips": self.lpips.label}

    def run(self) -> EvaluationResult:
        write_manifest(self.sweep.out_dir, self.spec, {"device": self.environment["device"], "dtype": self.dtype})
        computed, all_points, grid_renders = 0, [], {}
        for spec, label in zip(self.spec.models, self.labels):
            loaded = load_model(spec, label, self.device, self.spec.seed)
            points = {scene: self.point(loaded.identity, scene) for scene in self.index}
            all_points += points.values()
            pending = [p["scene"] for p in self.sweep.pending(list(points.values()))]
            computed += self._evaluate_model(loaded, pending, points)
            grid_renders.update(self._grid_renders(loaded))
            del loaded
            release_memory()
        rows = self.sweep.rows(all_points)
        per_scene, summary, failures = self.tables(rows)
        report = self.report(summary, per_scene, failures, grid_renders)
        # What a loader noted about the data (e.g. lens distortion left uncorrected) reaches the table.
        data_notes = sorted({note for r in rows for note in r.get("data_notes") or []})
        report.tables[0].notes += [f"data: {note}" for note in data_notes]
        paths = write_report(report, self.sweep.out_dir)
        paths["per_scene"] = self.sweep.out_dir / "per_scene.csv"
        write_atomic(paths["per_scene"], per_scene.to_csv(index=False, na_rep="n/a"))
        return EvaluationResult(summary, per_scene, paths, computed, len(failures), failures)

    def _example(self, scene: str):
        from .data import evaluation_examples
        return next(iter(evaluation_examples(self.data.source, {scene: self.index[scene]}, normalize=self.spec.data.normalize)))

    def _evaluate_model(self, loaded: LoadedModel, pending: list[str], points: dict[str, dict[str, Any]]) -> int:
        """Scenes in groups of `batch_size` of equal view counts; a scene whose data fails is recorded
        alone, a group whose forward fails is recorded scene by scene, and the run goes on."""
        from .data import collate
        bar = tqdm(total=len(pending), desc=f"evaluate {loaded.label}", unit="scene", disable=not self.progress or not pending)
        group: list[Any] = []

        def flush() -> None:
            if not group:
                return
            try:
                renders = render(loaded.model, collate(group), self.device, self.dtype)
                for ex, image in zip(group, renders):
                    self._record_scene(loaded, ex, image, points[ex.scene])
            except Exception as error:  # one failing group is recorded with its reason; the run goes on
                for ex in group:
                    self._record_failure(loaded, points[ex.scene], error)
                release_memory()
            bar.update(len(group))
            group.clear()

        for scene in pending:
            try:
                ex = self._example(scene)
            except Exception as error:  # bad data on disk: recorded for this scene, the others still run
                self._record_failure(loaded, points[scene], error)
                bar.update(1)
                continue
            if group and (ex.input_images.shape != group[0].input_images.shape
                          or ex.target_images.shape != group[0].target_images.shape):
                flush()
            group.append(ex)
            if len(group) == self.spec.batch_size:
                flush()
        flush()
        bar.close()
        return len(pending)

    def _columns(self, loaded: LoadedModel, scene: str) -> dict[str, Any]:
        return {**loaded.info, "data_source": self.spec.data.source, "lpips_net": self.lpips.label,
                "context": self.index[scene]["context"], "target": self.index[scene]["target"]}

    def _record_failure(self, loaded: LoadedModel, point: dict[str, Any], error: BaseException) -> None:
        log.warning("evaluate %s, scene %s failed: %s", loaded.label, point["scene"], one_line(error))
        self.sweep.record(point, self._columns(loaded, point["scene"]), failure_status(error), one_line(error))

    def _record_scene(self, loaded: LoadedModel, ex: Any, image: torch.Tensor, point: dict[str, Any]) -> None:
        views = image_metrics(image, ex.target_images.to(image.device), self.lpips)
        view_rows = [{"model": loaded.label, "scene": ex.scene, "view": int(v), **values}
                     for v, values in zip(ex.target_indices, views)]
        means = scene_means(view_rows).iloc[0]
        self.sweep.record(point, {**self._columns(loaded, ex.scene), "per_view": view_rows, "targets": int(means["targets"]),
                                  **{m: _none_if_nan(means[m]) for m in METRICS}, "data_notes": list(ex.notes)})

    def _grid_renders(self, loaded: LoadedModel) -> dict[tuple[str, str], torch.Tensor]:
        from .data import collate
        out = {}
        for scene in list(self.index)[:self.spec.grid_scenes]:
            try:
                out[(loaded.label, scene)] = render(loaded.model, collate([self._example(scene)]), self.device, self.dtype)[0, 0].cpu()
            except Exception:  # its failure is already in the rows; the grid shows a blank
                continue
        return out

    # --------------------------------------------------------------------------------- outputs

    def tables(self, rows: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
        """Rebuilt from the rows of this run's points, never from memory."""
        ok = [r for r in rows if r.get("status") == "ok"]
        failures = [f"{r['model']} / {r['scene']}: {r.get('error')}" for r in rows if r.get("status") != "ok"]
        per_scene = pd.DataFrame(ok, columns=["model", "scene", *METRICS, "targets", "weights", "dtype", "device", "commit"])
        summary = mean_over_scenes(ok) if ok else pd.DataFrame(columns=["model", *METRICS, "scenes"])
        failed = pd.Series([r["model"] for r in rows if r.get("status") != "ok"], dtype=object).value_counts()
        info = {row["model"]: row for row in ok}
        out = []
        for label in self.labels:
            if label not in info:
                out.append({"model": label, "scenes": 0, "failed": int(failed.get(label, 0)),
                            "source": "not measured: every scene failed (see the notes)"})
                continue
            base = info[label]
            sums = summary[summary["model"] == label].iloc[0]
            out.append({"model": label, "weights": base["weights"], "preset": base["preset"],
                        **{m: _none_if_nan(sums[m]) for m in METRICS}, "scenes": int(sums["scenes"]),
                        "failed": int(failed.get(label, 0)),
                        "source": f"measured: {base['device']}, {base['dtype']}, commit {base['commit']}"})
        columns = ["model", "weights", "preset", *METRICS, "scenes", "failed", "source"]
        return per_scene, pd.DataFrame(out, columns=columns), failures

    def with_published(self, summary: pd.DataFrame) -> pd.DataFrame:
        rows = []
        if self.spec.card_table:
            for spec in self.spec.models:
                published = model_card(spec.name).published.get(self.spec.card_table)
                if published is not None and variant_label(spec.name) not in [r["model"] for r in rows]:
                    rows.append({"model": variant_label(spec.name), "weights": "published", **dict(published.values),
                                 "source": f"published: {published.source}"})
        if self.spec.published:
            rows += [{"model": r.model, "weights": "published", "psnr": r.psnr, "ssim": r.ssim, "lpips": r.lpips,
                      "source": f"published: {r.source or self.spec.published.source}"} for r in self.spec.published.rows]
        if not rows:
            return summary
        return pd.concat([summary, pd.DataFrame(rows).reindex(columns=summary.columns)], ignore_index=True)

    def notes(self, failures: list[str]) -> list[str]:
        data = self.spec.data
        options = ", ".join(f"{k}={v}" for k, v in self.data.identity["options"].items())
        index = self.data.identity["index"]
        index_text = index.get("file") or f"drawn ({data.n_input} inputs, {data.n_target} targets, seed {data.seed})"
        notes = [
            f"Measured rows: dataset {data.source} ({options}), {len(self.index)} scenes, evaluation index {index_text}",
            *([f"{self.data.not_in_source} scenes of the index are not in the source and were not evaluated"]
              if self.data.not_in_source else []),
            f"device {self.environment['device']}, dtype {self.dtype}, torch {self.environment['torch']}, "
            f"commit {self.environment['commit']}",
            "Protocol (pixelSplat/MVSplat/LVSM): PSNR on [0,1]-clamped images; SSIM skimage win 11, gaussian, "
            "data_range 1; LPIPS normalize=True; mean over each scene's targets, then over scenes",
            f"LPIPS: {self.lpips.message}",
        ]
        if any(not m.checkpoint for m in self.spec.models):
            notes.append("weights 'random-init': freshly initialised models (no checkpoint); their numbers say nothing "
                         "about the trained models")
        if self.spec.published and self.spec.published.rows:
            notes.append(f"Published rows: {self.spec.published.source}; not measured here")
        if failures:
            notes.append(f"{len(failures)} (model, scene) evaluation(s) failed and are left out of the means "
                         f"(a rerun retries them): " + "; ".join(failures[:5]) + (" ..." if len(failures) > 5 else ""))
        return notes

    def report(self, summary: pd.DataFrame, per_scene: pd.DataFrame, failures: list[str],
               grid_renders: dict[tuple[str, str], torch.Tensor]) -> Report:
        notes = self.notes(failures)
        title = f"{self.spec.name}: image quality ({self.spec.data.source})"
        result = Report(title, notes, [Table("summary", title, self.with_published(summary), notes)])
        for row in summary.itertuples():
            if row.psnr is not None and row.psnr == row.psnr:
                published = model_card(row.model).published.get(self.spec.card_table) if row.model in list_models() else None
                result.headlines.append(f"{row.model} ({row.weights}): PSNR {row.psnr:.2f} dB, SSIM {row.ssim:.3f}"
                                        + (f", LPIPS {row.lpips:.3f}" if row.lpips is not None and row.lpips == row.lpips else "")
                                        + (f"; published {published.values.get('psnr')} dB ({published.source})" if published else ""))
        if self.spec.grid_scenes and grid_renders:
            result.figures["grid.png"] = lambda: self.grid_figure(grid_renders)
        return result

    def grid_figure(self, renders: dict[tuple[str, str], torch.Tensor]):
        from .plots import plt
        examples = {}
        for scene in list(self.index)[:self.spec.grid_scenes]:
            try:
                examples[scene] = self._example(scene)
            except Exception:  # a scene whose data fails is already a failed row; the grid skips it
                continue
        if not examples:
            return None
        scenes = list(examples)
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
            axes[r, 0].text(-0.08, 0.5, scene, transform=axes[r, 0].transAxes, fontsize=5, rotation=90, ha="right", va="center")
        weights = {label: RANDOM_INIT if not m.checkpoint else "checkpoint" for label, m in zip(self.labels, self.spec.models)}
        fig.suptitle(f"{self.spec.name}: first target view; models: " + ", ".join(f"{k} ({v})" for k, v in weights.items()),
                     fontsize=7)
        return fig


def _none_if_nan(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and value != value) else float(value)


def with_checkpoints(spec: EvaluateSpec, checkpoints: tuple[str, ...]) -> list[dict[str, Any]] | None:
    """`[MODEL=]PATH` items replace the experiment's model list (our checkpoints name their model;
    official ones need MODEL=)."""
    if not checkpoints:
        return None
    models = []
    for item in checkpoints:
        name, _, path = item.rpartition("=") if "=" in item else ("", "", item)
        path = _expand(path)
        if not Path(path).is_file():
            raise MissingResource(f"--checkpoint {item}: file {path} not found")
        if name and name not in list_models():
            raise ConfigError(f"--checkpoint {item}: unknown model {name!r}; registered: {', '.join(list_models())}")
        models.append({"name": name or _checkpoint_model(path, item), "checkpoint": path})
    return models


def _checkpoint_model(path: str, item: str) -> str:
    """The variant one of our checkpoints holds (official files do not say: they need MODEL=)."""
    obj = read_torch_file(Path(path))
    if not is_our_checkpoint(obj):
        raise CheckpointError(f"--checkpoint {item}: not an lvsm-bench checkpoint; for an official one write MODEL={path}")
    return obj["model"]


def run_evaluation(spec: EvaluateSpec, options: RunOptions) -> EvaluationResult | None:
    from .schema import revalidate
    models = with_checkpoints(spec, options.checkpoints)
    if models is not None:
        spec = revalidate(spec, models=models)
    if options.preset:
        spec = revalidate(spec, models=[m.model_dump() if m.checkpoint else {**m.model_dump(), "preset": options.preset}
                                        for m in spec.models])
    try:
        evaluation = Evaluation(spec, progress=options.progress)
    except MissingResource as missing:
        print(f"{spec.name}: not run: {missing}")
        return None
    result = evaluation.run()
    log.info("%s: %d scene evaluations computed, %d failed, the rest resumed from %s", spec.name, result.computed,
             result.failed, evaluation.sweep.store.path)
    return result


EVALUATE = Kind(EvaluateSpec, run_evaluation, "PSNR / SSIM / LPIPS of models or checkpoints on an evaluation index")
