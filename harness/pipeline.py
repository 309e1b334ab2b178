"""The pipeline every kind shares: points -> measure -> rows.jsonl -> report.

A kind lists its points (plain dicts: what is measured and everything that changes the result) and a
`measure` function. `Sweep.run` measures each point not yet recorded and appends one row the moment
it exists; a point that raises is recorded with status `oom` / `error` and its reason, and the sweep
goes on. A rerun skips points recorded `ok` or `oom` for the same experiment, point and code version
(an OOM would only repeat; an evaluation retries it too, since its table must be complete) and retries
the failed ones. A point's code version covers the code that measures it (`code`: the kind's measuring
module and the variants it measures, see `provenance.code_version`), so an edit elsewhere (another
variant, the site, a docstring) re-measures nothing. The kind then builds a `Report` from the
recorded rows alone (never from memory); `write_report` renders it once to Markdown, CSV, LaTeX and
the console, with its figures, beside one `manifest.json` (resolved config, environment, commit).

Under torchrun a sweep spans the world (`harness.distributed`): rank 0 holds the output folder and
decides which points are missing; those are shared out, each measured by exactly one rank, which
appends its rows to a file of its own as they exist (`rows.rank<k>.jsonl`: appends from several
hosts to one file on a network file system can overwrite each other); at `gather` rank 0 moves them
into `rows.jsonl`, and builds the report from it alone. A rerun under another world size reads the
same rows. Kinds whose every point needs every rank (DDP training) sweep `together`.
"""
from __future__ import annotations

import functools
import gc
import importlib.metadata
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
from tqdm import tqdm

from .distributed import World, current_world
from .errors import OutputError
from .outputs import ROWS, check_owner, current_ledger, ensure_writable, lock, rank_rows
from .provenance import code_version, git_commit
from .records import RecordStore, point_id, point_key, write_atomic
from .report import (Fact, FigureData, ReportData, Setting, markdown_of, measured_setting, table_data, write_report_json,
                     write_table_files)

log = logging.getLogger(__name__)

SKIP_STATUSES = ("ok", "oom")
_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory")

Point = Mapping[str, Any]


def failure_status(error: BaseException) -> str:
    import torch
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return "oom"
    if isinstance(error, RuntimeError) and any(text in str(error).lower() for text in _OOM_TEXT):
        return "oom"
    return "error"


def one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:limit]


def release_memory() -> None:
    import torch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class SweepSummary:
    measured: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    left: int = 0  # not reached before the deadline; a rerun measures them

    def line(self, name: str) -> str:
        text = f"{name}: {self.measured} measured, {self.skipped} already recorded, {len(self.failed)} failed"
        if self.left:
            text += f", {self.left} left for the next run (deadline reached; rerun to resume)"
        return text


@dataclass
class Sweep:
    """The points of one experiment and the record file they go to. Opening a sweep takes its folder
    (one experiment per folder, one command at a time; see `harness.outputs`): rank 0 of the world
    proves it writable, locks it and moves unreadable lines of its rows (and rows a killed run's
    other ranks left in their files) into place, and every rank hears whether that worked."""
    out_dir: Path
    experiment: str
    context: Mapping[str, Any] = field(default_factory=dict)  # columns added to every row (device, commit ...)
    version: str | None = None  # one code version for every point, instead of the version of its `code`
    skip: tuple[str, ...] = SKIP_STATUSES  # statuses a rerun does not measure again
    # True: every rank measures every point together (DDP training) and rank 0 records it; False: the
    # points are shared out across the ranks, each measured by one.
    together: bool = False
    world: World = field(default_factory=current_world)
    # The modules whose code measures a point (`provenance.measured_by`): its rows are keyed by their code
    # version. None: every module of models/ and harness/, so that no point resumes across an edit of
    # code that may have measured it.
    code: Callable[[Point], Sequence[str]] | None = None

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.store = RecordStore(self.out_dir / ROWS)  # the record; rank 0 alone writes it
        self.world.agree(self._take_folder)
        self._mine = self.store if self.world.is_main else RecordStore(rank_rows(self.out_dir, self.world.rank))

    def _take_folder(self) -> None:
        ensure_writable(self.out_dir)
        check_owner(self.out_dir, self.experiment)
        held, taken = lock(self.out_dir, self.experiment)
        book = current_ledger()
        if taken and book is not None:
            book.locks.append(held)
        self.store.set_aside_unreadable()
        self._absorb_rank_files()

    def _absorb_rank_files(self) -> None:
        for path in sorted(self.out_dir.glob(rank_rows(self.out_dir, "*").name), key=lambda p: p.name):
            self.store.absorb(RecordStore(path))

    def gather(self) -> None:
        """Once every rank has recorded its points: rank 0 moves the other ranks' rows into the record,
        after which every rank reads the same complete record. Every rank calls it."""
        if not self.world.distributed:
            return
        self.world.barrier()
        self.world.agree(self._absorb_rank_files)

    def modules(self, point: Point) -> tuple[str, ...]:
        return tuple(self.code(point)) if self.code and self.version is None else ()

    def version_of(self, point: Point) -> str:
        return self.version if self.version is not None else code_version(*self.modules(point))

    def key(self, point: Point) -> str:
        return point_key(self.experiment, point, self.version_of(point))

    def _track(self, points: Sequence[Point], label: Callable[[Point], str] | None = None) -> None:
        book = current_ledger()
        if book is not None:
            book.track(self, {self.key(p): label(p) if label else "" for p in points})

    def pending(self, points: Sequence[Point]) -> list[Point]:
        """The points not recorded yet, as rank 0 reads the record (every rank calls it, between gathers,
        and gets the same list)."""
        self._track(points)

        def missing() -> list[int]:
            done = self.store.done_keys(self.skip)
            return [i for i, p in enumerate(points) if self.key(p) not in done]

        return [points[i] for i in self.world.broadcast(missing() if self.world.is_main else None)]

    def record(self, point: Point, result: Mapping[str, Any], status: str = "ok", error: str | None = None) -> dict[str, Any]:
        world = {"rank": self.world.rank, "world_size": self.world.size} if self.world.distributed else {}
        # `code_modules` lets the paper index find the commit that holds a version measured with uncommitted
        # changes; `point_id` lets readers take a point's latest row whatever code version measured it.
        row = {"key": self.key(point), "point_id": point_id(self.experiment, point), "experiment": self.experiment,
               "version": self.version_of(point), "code_modules": list(self.modules(point)), "status": status,
               "error": error, **self.context, **world, **point, **result}
        if self.world.is_main or not self.together:
            self._mine.append(row)
        return row

    def run(self, points: Sequence[Point], measure: Callable[[Point], Mapping[str, Any]],
            label: Callable[[Point], str] = lambda p: "", progress: bool = True,
            deadline_s: float | None = None, unit: str = "point") -> SweepSummary:
        """Measure what is not recorded yet (this rank's share of it, or all of it `together`), then
        gather; `deadline_s`: start no new point after this long. Every rank calls it."""
        self._track(points, label)
        todo = self.pending(points)
        mine = todo if self.together else self.world.share(todo)
        summary = SweepSummary(skipped=len(points) - len(todo))
        start = time.monotonic()
        bar = tqdm(total=len(mine), desc=self.experiment, unit=unit, disable=not progress or not mine or not self.world.is_main,
                   dynamic_ncols=True, mininterval=1.0)
        for point in mine:
            if deadline_s is not None and time.monotonic() - start > deadline_s:
                summary.left += 1
                continue
            bar.set_postfix_str(label(point))
            try:
                result, status, error = dict(measure(point)), "ok", None
            except OutputError:
                raise  # a full disk or an unwritable folder fails every later point too: stop with its line
            except Exception as caught:  # one failing point is recorded with its reason; the sweep goes on
                result, status, error = {}, failure_status(caught), one_line(caught)
                summary.failed.append(f"{label(point)}: {error}")
                log.warning("%s: %s failed: %s", self.experiment, label(point), error)
                release_memory()
            self.record(point, result, status, error)
            summary.measured += 1
            bar.update(1)
        bar.close()
        self.gather()
        if not self.together:
            parts = self.world.gather((summary.measured, summary.failed, summary.left))
            summary.measured, summary.left = sum(p[0] for p in parts), sum(p[2] for p in parts)
            summary.failed = [failure for p in parts for failure in p[1]]
        if self.world.is_main:
            log.info(summary.line(self.experiment) + (f" by {self.world.size} ranks" if self.world.distributed else ""))
        return summary

    def recorded_rows(self, points: Sequence[Point], identity: Callable[[Point], Point] | None = None
                      ) -> tuple[list[dict[str, Any]], set[str]]:
        """`--from-records`: the latest row of each point whatever code version recorded it, in point order,
        and the point fields some of those rows predate. A row matches a point when every field of the point
        it records is equal; a field the row predates (a config field added later, with the default that
        keeps the old behaviour) is not compared, and is returned so that the report can say so. `identity`
        maps a point, and a row alike, to what identifies the measurement (e.g. the config a preset builds,
        so that a renamed preset still finds its rows)."""
        self._track(points)
        same = identity or (lambda p: p)
        rows = [(r, same(r)) for r in self.store.rows() if r.get("experiment", self.experiment) == self.experiment]
        found, predated = [], set()
        for point in points:
            wanted = point_id(self.experiment, point)
            exact = [r for r, _ in rows if r.get("point_id") == wanted]
            if exact:
                found.append(exact[-1])
                continue
            identified = same(point)
            near = [(r, missing) for r, known in rows if (missing := _recorded_match(identified, known)) is not None]
            if near:
                row, missing = near[-1]
                found.append(row)
                predated |= missing
        return found, predated

    def rows(self, points: Sequence[Point]) -> list[dict[str, Any]]:
        """The latest row of each point, in point order; points not yet recorded are left out."""
        self._track(points)
        latest = self.store.latest_by_key()
        return [latest[k] for k in (self.key(p) for p in points) if k in latest]


def _recorded_match(point: Mapping[str, Any], row: Mapping[str, Any], where: str = "") -> set[str] | None:
    """None when `row` records another value of some field of `point`, or lacks one of its top-level
    values (which say what kind of point it is: a model, a mode, N); else the nested fields it lacks."""
    missing: set[str] = set()
    for key, value in point.items():
        path = f"{where}{key}"
        if key not in row:
            if not where and not isinstance(value, Mapping):
                return None
            missing.add(path)
        elif isinstance(value, Mapping) and isinstance(row[key], Mapping):
            inner = _recorded_match(value, row[key], f"{path}.")
            if inner is None:
                return None
            missing |= inner
        elif json.dumps(value, sort_keys=True, default=str) != json.dumps(row[key], sort_keys=True, default=str):
            return None
    return missing


def by_config(point: Point) -> Point:
    """A point (or row) that names its model by preset and overrides, identified instead by the config they
    build: a preset renamed, or overrides folded into a preset, is the same measurement."""
    from models import list_models, model_config
    if point.get("model") not in list_models() or "preset" not in point:
        return point
    config = model_config(point["model"], point["preset"], **(point.get("overrides") or {})).to_dict()
    return {**{k: v for k, v in point.items() if k not in ("preset", "overrides")}, "model_config": config}


# -------------------------------------------------------------------------------------- report


@dataclass
class Plan:
    """What a kind measures, in the pipeline's terms: its points, how one is measured and named, the code
    that measures one (its rows' resume key), the run's columns for every row and for the manifest, and
    how the recorded rows become the report. The pipeline (`run_plan`) does the rest, alike for every kind."""
    points: list[Point]
    measure: Callable[[Point], Mapping[str, Any]]
    label: Callable[[Point], str]
    report: Callable[[list[dict[str, Any]], int], "Report"]  # (rows, number of points) -> the report
    code: Callable[[Point], Sequence[str]] | None = None
    context: Mapping[str, Any] = field(default_factory=dict)
    manifest: Mapping[str, Any] = field(default_factory=dict)
    deadline_s: float | None = None
    identity: Callable[[Point], Point] | None = None  # what identifies a measurement when rebuilt from records


FROM_RECORDS = "built from the recorded rows (--from-records): nothing measured; each row keeps the commit that measured it"


def from_records_line(predated: set[str]) -> str:
    """The first note of a report rebuilt from records, naming the fields some of its rows predate."""
    return FROM_RECORDS + (f"; fields some rows predate, taken as their defaults: {', '.join(sorted(predated))}" if predated else "")


def run_plan(spec: Any, plan: Plan, options: Any) -> list[dict[str, Any]]:
    """Open the experiment's sweep, write its manifest, measure what is not recorded yet (shared out over the
    ranks; a failing point is recorded with its reason and the sweep goes on), then on rank 0 build and write
    the report from the rows. With `options.from_records` nothing is measured: the report is built from each
    point's latest row, whatever code version recorded it. Returns the rows (none on the other ranks)."""
    sweep = Sweep(spec.results_dir(), spec.name, context=plan.context, code=plan.code)
    if options.from_records:
        if not sweep.world.is_main:
            return []
        rows, predated = sweep.recorded_rows(plan.points, plan.identity)
        line = from_records_line(predated)
    else:
        write_manifest(sweep.out_dir, spec, plan.manifest)
        summary = sweep.run(plan.points, plan.measure, plan.label, options.progress, deadline_s=plan.deadline_s)
        if not sweep.world.is_main:
            return []
        rows, line = sweep.rows(plan.points), summary.line(spec.name)
    # The index names the rows the tables show, not every version's rows the records keep.
    write_manifest(sweep.out_dir, spec, {**(plan.manifest or {}), "rows_shown": [r["key"] for r in rows]})
    report = plan.report(rows, len(plan.points))
    report.notes.insert(0, line)
    write_report(report, sweep.out_dir, spec, rows)
    return rows


@dataclass
class Table:
    """A table a kind builds: its frame, and what `report.table_data` needs to type it. `columns` declares
    the columns whose name says too little (a published column, a quantity, a setting); `settings` names
    the settings its numbers come from ("ours" and each published source); `compare` pairs a column of
    ours with a published one (subtracted only where the settings match)."""
    stem: str
    title: str
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    floatfmt: str = ".4g"
    console: bool = True  # also printed when the run ends
    columns: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Setting] = field(default_factory=dict)
    compare: list[tuple[str, str]] = field(default_factory=list)
    status: list[str] = field(default_factory=list)  # per row: ok, noisy, published, failed (default: from its cells)


@dataclass
class Report:
    """What a run says: a title, provenance notes, tables, figures (file name -> matplotlib figure
    or a function that draws one), headline lines printed last, the setting its numbers were measured
    in, the facts the paper index's summary may show, and what was asked for but not run (with why)."""
    title: str
    notes: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    headlines: list[str] = field(default_factory=list)
    setting: Setting | None = None
    facts: list[Fact] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)


def write_report(report: Report, out_dir: str | Path, spec: Any, rows: Sequence[Mapping[str, Any]] = (),
                 stream=None) -> dict[str, Path]:
    """`report.json` (the report as data: typed tables, settings, facts), then every table rendered from it
    as .md/.csv/.tex, every figure as a file, and the whole report on the console. Under torchrun rank 0
    alone writes and prints (elsewhere this returns at once), whatever the kind does."""
    from .plots import save_figure
    if not current_world().is_main:
        return {}
    out_dir = Path(out_dir)
    setting = report.setting or measured_setting(rows)
    data = ReportData(
        experiment=spec.name, kind=spec.kind, title=report.title, notes=report.notes, setting=setting,
        headlines=report.headlines, facts=report.facts, not_run=report.not_run, commit=git_commit(),
        written=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        tables=[table_data(t.stem, t.title, t.frame, t.notes, t.columns, {"ours": setting, **t.settings}, t.compare,
                           t.floatfmt, t.console, t.status) for t in report.tables])
    paths: dict[str, Path] = {}
    console = [f"# {data.title}", f"- setting: {setting.describe()}", *[f"- {n}" for n in data.notes], ""]
    for name, figure in report.figures.items():
        figure = figure() if callable(figure) else figure
        if figure is not None:
            paths[name] = save_figure(figure, out_dir / name)
            data.figures.append(FigureData(file=name))
    for table in data.tables:
        paths[table.stem] = write_table_files(table, out_dir)["md"]
        if table.console:
            console += [f"## {table.title}", "", markdown_of(table) if table.rows else "(empty)", ""]
    paths["report"] = write_report_json(data, out_dir)
    console += data.headlines
    # The paper index (results/README.md) quotes these lines beside the published numbers.
    write_atomic(out_dir / "headlines.md", "".join(f"- {line}\n" for line in data.headlines))
    console.append("wrote " + ", ".join(str(p) for p in paths.values()))
    print("\n".join(console), file=stream or sys.stdout)
    return paths


# ------------------------------------------------------------------------------------ manifest

PACKAGES = ("torch", "torchvision", "numpy", "pandas", "pydantic", "scikit-image", "lpips", "matplotlib", "PyYAML")


@functools.lru_cache(maxsize=1)
def environment_report() -> dict[str, Any]:
    """torch.utils.collect_env's report and the versions of the packages that shape a number."""
    from torch.utils import collect_env
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    try:
        info = collect_env.get_env_info()._asdict()
    except Exception as error:  # collect_env shells out to tools that may be missing; the manifest says so
        info = {"error": one_line(error)}
    info.pop("pip_packages", None)
    info.pop("conda_packages", None)
    return {"packages": versions, "collect_env": info}


def write_manifest(out_dir: str | Path, spec: Any, extra: Mapping[str, Any] | None = None) -> Path:
    """One manifest per run: the resolved experiment, the command, the world that ran it (size,
    backend, every rank's host and device), the environment and the commit. Rank 0 alone writes it
    (elsewhere this returns its path at once)."""
    world = current_world()
    path = Path(out_dir) / "manifest.json"
    if not world.is_main:
        return path
    # No code version here: each row carries the version of the code that measured it.
    manifest = {"experiment": spec.model_dump(mode="json"), "command": sys.argv, "commit": git_commit(),
                "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "world_size": world.size, "world": world.describe(), **(extra or {}), **environment_report()}
    write_atomic(path, json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    return path


# -------------------------------------------------------------------------------- row helpers


def ok_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        return frame
    return frame[frame["status"] == "ok"].copy()


def failure_notes(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[str]:
    """One note per failed point, so a table never silently drops one."""
    return [f"not measured ({r['status']}): " + ", ".join(f"{c}={r.get(c)}" for c in columns) + f": {r.get('error')}"
            for r in rows if r.get("status") != "ok"]


def measured_commits(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted({str(r["commit"]) for r in rows if r.get("commit")})
