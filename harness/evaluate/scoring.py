"""The scoring loop: for each model, the scenes its rows lack are rendered in batches, scored per
target view and recorded one row per scene the moment they exist; a scene or batch that fails is
recorded with its reason and the loop goes on. The report is then rebuilt from the rows.

Under torchrun the scenes the rows lack are shared out across the ranks, each scene scored by exactly
one (nothing padded, nothing dropped, unlike a DistributedSampler with drop_last); each rank records its
own scenes' rows, and rank 0 builds the summary once from all of them. Scenes are identified by their
key, not by the rank or world that scored them, so a rerun under another world size resumes."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from ..errors import MissingResource, OutputError
from ..metrics import METRICS, LPIPSMetric, image_metrics, none_if_nan, scene_means
from ..pipeline import Sweep, failure_status, from_records_line, one_line, release_memory, write_manifest, write_report
from ..provenance import environment, measured_by
from ..records import write_atomic
from ..runtime import default_dtype, resolve_device
from . import report
from .inputs import LoadedModel, expand, load_model, render, resolve_data, same_index_content
from .loader import scene_groups
from .spec import EvaluateSpec, label_of

log = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    summary: pd.DataFrame
    per_scene: pd.DataFrame
    paths: dict[str, Path]
    computed: int  # (model, scene) pairs evaluated by this call, by every rank; resumed ones are not counted
    failed: int  # (model, scene) pairs whose latest row is a failure
    failures: list[str] = field(default_factory=list)
    scenes_per_s: float | None = None  # this call's throughput (None: nothing evaluated)


class Evaluation:
    """One evaluation run: resolves device, data, metrics and models, then evaluates what the rows lack."""

    def __init__(self, spec: EvaluateSpec, progress: bool = True, from_records: bool = False):
        self.spec = spec
        self.progress = progress
        self.from_records = from_records  # the report from the recorded rows: nothing is scored
        self.sizes: dict[str, str] = {}  # model label -> its parameters and config, as loaded
        self.device = resolve_device(spec.device)
        self.dtype = default_dtype(self.device) if spec.dtype == "auto" else spec.dtype
        self.environment = environment(self.device)
        for model in spec.models:  # every checkpoint is there before anything is evaluated or written
            if model.checkpoint and not Path(expand(model.checkpoint)).is_file():
                raise MissingResource(f"{spec.name}: checkpoint {expand(model.checkpoint)} of {model.label or model.name} not found"
                                      + (f"; {' '.join(spec.requires.split())}" if spec.requires else ""))
        self.data = resolve_data(spec.data)  # before the output directory exists: missing data writes nothing
        self.sweep = Sweep(spec.results_dir(), spec.name, context=self.environment, skip=("ok",),
                           code=lambda p: measured_by(__name__, p["variant"], sources=[p["data"]["source"]]))
        self.index = self.data.index
        self.lpips = LPIPSMetric(spec.lpips_net, self.device, spec.lpips_backbone or None)
        self.labels = [label_of(m, spec.models) for m in spec.models]

    def point(self, identity: dict[str, Any], scene: str) -> dict[str, Any]:
        return {**identity, "data": self.data.identity, "scene": scene, "views": self.index[scene],
                "dtype": self.dtype, "lpips_net": self.lpips.label}

    def run(self) -> EvaluationResult | None:
        """Every rank calls it; rank 0 returns the result, the other ranks None."""
        world = self.sweep.world
        write_manifest(self.sweep.out_dir, self.spec, {"device": self.environment["device"], "dtype": self.dtype})
        computed, seconds, all_points, grid_renders = 0, 0.0, [], {}
        for spec, label in zip(self.spec.models, self.labels):
            loaded = load_model(spec, label, self.device, self.spec.seed)
            self.sizes[loaded.label] = loaded.info["size"]
            points = {scene: self.point(loaded.identity, scene) for scene in self.index}
            all_points += points.values()
            pending = [] if self.from_records else self.sweep.pending(list(points.values()))
            mine = world.share([p["scene"] for p in pending])
            started = time.perf_counter()
            self._evaluate_model(loaded, mine, points)
            seconds += time.perf_counter() - started
            computed += len(mine)
            self.sweep.gather()
            if world.is_main:
                grid_renders.update(self._grid_renders(loaded))
            del loaded
            release_memory()
        # The world's throughput: every rank's scenes over the slowest rank's time.
        work = world.gather((computed, seconds))
        computed, seconds = sum(n for n, _ in work), max(t for _, t in work)
        if not world.is_main:
            return None
        rate = computed / seconds if computed and seconds > 0 else None
        if self.from_records:
            rows, predated = self.sweep.recorded_rows(all_points, same_index_content)
            # Rows that predate the `size` column: the loaded model says what it is (its weights are the rows').
            rows = [{**r, "size": r.get("size") or self.sizes.get(r.get("model"))} for r in rows]
        else:
            rows, predated = self.sweep.rows(all_points), set()
        per_scene, summary, failures = report.tables(rows, self.labels)
        notes = report.notes(self.spec, self.data, self.environment, self.dtype, self.lpips.message, failures, rows)
        notes[1:1] = report.protocol_notes(self.spec, self.data, rows)
        notes.append(self._throughput_note(computed, seconds, rate))
        if self.from_records:
            notes.insert(0, from_records_line(predated))
        result = report.build(self.spec, summary, notes, report.setting(self.spec, self.data, rows), report.first_target_psnrs(rows),
                              self._grid_examples if grid_renders else None, grid_renders)
        # What a loader noted about the data (e.g. lens distortion left uncorrected) reaches the table.
        data_notes = sorted({note for r in rows for note in r.get("data_notes") or []})
        result.tables[0].notes += [f"data: {note}" for note in data_notes]
        if not self.lpips.available:
            result.not_run.append(f"LPIPS: n/a in every row. {self.lpips.message}")
        paths = write_report(result, self.sweep.out_dir, self.spec, rows)
        paths["per_scene"] = self.sweep.out_dir / "per_scene.csv"
        write_atomic(paths["per_scene"], per_scene.to_csv(index=False, na_rep="n/a"))
        return EvaluationResult(summary, per_scene, paths, computed, len(failures), failures, rate)

    def _throughput_note(self, computed: int, seconds: float, rate: float | None) -> str:
        world = self.sweep.world
        if rate is None:
            return "throughput: this run evaluated nothing (every scene was resumed from the rows)"
        return (f"throughput: {rate:.2f} scenes/s in this run ({computed} (model, scene) evaluations in {seconds:.1f} s "
                f"on {world.size} rank{'s' if world.size > 1 else ''}, data.num_workers={self.spec.data.num_workers}, "
                f"batch_size={self.spec.batch_size}; reading, rendering and scoring)")

    def _example(self, scene: str):
        from ..data import evaluation_examples
        return next(iter(evaluation_examples(self.data.source, {scene: self.index[scene]}, normalize=self.spec.data.normalize)))

    def _evaluate_model(self, loaded: LoadedModel, scenes: list[str], points: dict[str, dict[str, Any]]) -> int:
        """`scenes` in batches of up to `batch_size` of equal view shapes, read by the loader's workers; a
        scene whose data fails is recorded alone, a batch whose forward fails is recorded scene by scene,
        and the run goes on."""
        bar = tqdm(total=len(scenes), desc=f"evaluate {loaded.label}", unit="scene",
                   disable=not self.progress or not scenes or not self.sweep.world.is_main)
        for group in scene_groups(scenes, self._example, self.spec.batch_size, self.spec.data.num_workers, self.device):
            if group.failed:
                self._record_failure(loaded, points[group.failed], group.status, group.error)
                bar.update(1)
                continue
            try:
                renders = render(loaded.model, group.batch, self.device, self.dtype)
                targets = group.batch["target_images"].to(self.device, non_blocking=True)
                for ex, image, target in zip(group.examples, renders, targets):
                    self._record_scene(loaded, ex, image, target, points[ex.scene])
            except OutputError:
                raise  # a full disk fails every later scene too: stop with its line
            except Exception as error:  # one failing batch is recorded with its reason; the run goes on
                for ex in group.examples:
                    self._record_failure(loaded, points[ex.scene], failure_status(error), one_line(error))
                release_memory()
            bar.update(len(group.examples))
        bar.close()
        return len(scenes)

    def _columns(self, loaded: LoadedModel, scene: str) -> dict[str, Any]:
        return {**loaded.info, "data_source": self.spec.data.source, "lpips_net": self.lpips.label,
                "context": self.index[scene]["context"], "target": self.index[scene]["target"]}

    def _record_failure(self, loaded: LoadedModel, point: dict[str, Any], status: str, error: str) -> None:
        log.warning("evaluate %s, scene %s failed: %s", loaded.label, point["scene"], error)
        self.sweep.record(point, self._columns(loaded, point["scene"]), status, error)

    def _record_scene(self, loaded: LoadedModel, ex: Any, image: torch.Tensor, target: torch.Tensor,
                      point: dict[str, Any]) -> None:
        views = image_metrics(image, target, self.lpips)
        view_rows = [{"model": loaded.label, "scene": ex.scene, "view": int(v), **values}
                     for v, values in zip(ex.target_indices, views)]
        means = scene_means(view_rows).iloc[0]
        height, width = ex.target_images.shape[-2:]
        size = getattr(self.data.source, "image_size", None)
        # A scene its protocol scores at another size (a portrait frame under `lvsm`) says so in its row.
        flag = f"scored at {width}x{height}" if size is not None and (height, width) != (size, size) else ""
        self.sweep.record(point, {**self._columns(loaded, ex.scene), "per_view": view_rows, "targets": int(means["targets"]),
                                  **{m: none_if_nan(means[m]) for m in METRICS}, "data_notes": list(ex.notes),
                                  "scored_px": f"{width}x{height}", "flag": flag})

    def _grid_scenes(self) -> list[str]:
        """The scenes rendered for the report: those of the grid and those with a strip of their own."""
        return list(self.index)[:max(self.spec.grid_scenes, self.spec.scene_renders)]

    def _grid_renders(self, loaded: LoadedModel) -> dict[tuple[str, str], torch.Tensor]:
        from ..data import collate
        out = {}
        for scene in self._grid_scenes():
            try:
                out[(loaded.label, scene)] = render(loaded.model, collate([self._example(scene)]), self.device, self.dtype)[0, 0].cpu()
            except Exception:  # its failure is already in the rows; the grid shows a blank
                continue
        return out

    def _grid_examples(self) -> dict[str, Any]:
        examples = {}
        for scene in self._grid_scenes():
            try:
                examples[scene] = self._example(scene)
            except Exception:  # a scene whose data fails is already a failed row; the grid skips it
                continue
        return examples
