"""What the site shows, gathered from what the harness recorded: the experiment YAMLs and their paper
entries, each results folder's rows, manifest, tables, figures and headlines, and the registry's
cards. No experiment, kind or variant is listed here: every page comes from what is found, and only
the pages' order follows the paper index's (`paper.in_paper_order`)."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from ..errors import HarnessError
from ..paper import in_paper_order, status as paper_status
from ..records import RecordStore, current_rows as shown_rows
from ..report import REPORT_FILE, ReportData, read_report, table_data
from ..schema import ExperimentBase, load_experiment
from .scenes import strips_from_grid
from .tables import TableView, table_view

log = logging.getLogger(__name__)

# Keys of a row that say which point it is (shown for a failed point), in the order shown.
POINT_KEYS = ("model", "variant", "arm", "seed", "mode", "scene", "n_input", "n_target", "n_cached", "N", "M", "preset", "dtype")
RAW_SUFFIXES = (".jsonl", ".json", ".md")
LONG_TABLE = 20  # rows
TABLE_FORMATS = ("csv", "tex", "md")


@dataclass
class Link:
    href: str
    text: str


@dataclass
class Figure:
    href: str
    title: str
    name: str


@dataclass
class PaperItem:
    number: int
    title: str
    published: str
    target: str
    status: str
    status_class: str  # ok, needs, missing
    headlines: list[str]


@dataclass
class Arm:
    """A trained arm for the seed-range chart: its final PSNR per seed."""
    name: str
    variant: str
    seeds: dict[int, float]

    @property
    def low(self) -> float:
        return min(self.seeds.values())

    @property
    def high(self) -> float:
        return max(self.seeds.values())

    @property
    def mean(self) -> float:
        return sum(self.seeds.values()) / len(self.seeds)


@dataclass
class Training:
    arms: list[Arm]
    bar: float | None  # best PSNR of the predictors that ignore the target camera
    bar_name: str
    curves: list[Figure]


@dataclass
class SceneStrip:
    scene: str
    href: str
    columns: list[str]


@dataclass
class Evaluation:
    per_scene: TableView
    strips: list[SceneStrip]
    note: str


@dataclass
class SamePoint:
    """One point measured by this experiment and by another (same variant, config, views, device, dtype,
    threads, batch): both numbers, and what differed in how they were taken."""
    model: str
    n_input: int
    n_target: int
    here_ms: float
    there_ms: float
    there: str  # the other experiment
    why: str


@dataclass
class Page:
    """One experiment (or one results folder no experiment claims)."""
    slug: str
    name: str
    kind: str
    description: str
    results: Path
    yaml: Link | None
    paper: list[PaperItem]
    headlines: list[str]
    provenance: list[tuple[str, str]]
    tables: list[TableView]
    figures: list[Figure]
    renders: list[Figure]
    failed_points: list[dict[str, Any]]
    raw: list[Link]
    counts: dict[str, int]
    published: list[dict[str, Any]] = field(default_factory=list)  # what the experiment compares with, from its YAML and cards
    training: Training | None = None
    evaluation: Evaluation | None = None
    notes: list[str] = field(default_factory=list)
    setting: str = ""  # where and at what scale the page's numbers were measured, in one line (the banner)
    same_points: list[SamePoint] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)  # asked for and not measured, each with why
    report: ReportData | None = None

    @property
    def status_class(self) -> str:
        classes = [p.status_class for p in self.paper]
        return "ok" if "ok" in classes else classes[0] if classes else ("ok" if self.counts.get("ok") else "missing")


# ------------------------------------------------------------------------------------ helpers


def rel(target: Path, page_dir: Path) -> str:
    return Path(os.path.relpath(target.resolve(), page_dir.resolve())).as_posix()


def rebase(spec: ExperimentBase, results_root: Path) -> ExperimentBase:
    """The experiment with its results folder under `results_root` (its `results/` prefix replaced)."""
    out = spec.results_dir()
    if not out.is_absolute() and out.parts and out.parts[0] == "results":
        out = results_root.joinpath(*out.parts[1:])
    return spec.model_copy(update={"output_dir": str(out)})


def current_rows(results: Path) -> list[dict[str, Any]]:
    """The rows the current tables show: the latest row of each point (`records.current_rows`)."""
    store = RecordStore(results / "rows.jsonl")
    return shown_rows(store.rows()) if store.path.is_file() else []


def manifest_of(results: Path) -> dict[str, Any]:
    path = results / "manifest.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        log.warning("%s: not valid JSON; provenance taken from the rows alone", path)
        return {}


def _values(rows: Sequence[Mapping[str, Any]], key: str) -> list[str]:
    return sorted({str(r[key]) for r in rows if r.get(key) not in (None, "")})


def _compact(value: Any, limit: int = 240) -> str:
    if isinstance(value, Mapping):
        text = ", ".join(f"{k}={_compact(v, limit)}" for k, v in value.items() if v not in (None, "", [], {}))
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(_compact(v, limit) for v in value) + "]"
    else:
        text = str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def provenance(manifest: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], report: ReportData | None) -> list[tuple[str, str]]:
    """The setting (device, dtype, threads, model size, views, data, training), then the protocol, commit,
    world size, code version, torch and date, from the report, the manifest and the rows; `not recorded`
    where none says."""
    experiment = {**(manifest.get("trained") or {}), **{k: v for k, v in (manifest.get("experiment") or {}).items() if v}}
    ok = [r for r in rows if r.get("status", "ok") == "ok"]
    setting = report.setting if report is not None else None
    protocol = "; ".join(f"{key}: {_compact(experiment[key])}" for key in ("measure", "train", "optim")
                         if isinstance(experiment.get(key), Mapping))
    commits = _values(ok, "commit")
    commit = ", ".join(commits)
    if report is not None and report.commit and report.commit not in commits:
        commit = (commit + "; " if commit else "") + f"report written at {report.commit}"
    world = manifest.get("world_size") or ", ".join(_values(ok, "world_size"))
    items = [("setting", setting.describe() if setting is not None else ""),
             ("device", (setting.device.name if setting is not None else "") or ", ".join(_values(ok, "device"))),
             ("dtype", (setting.device.dtype if setting is not None else "") or ", ".join(_values(ok, "dtype"))),
             ("protocol", protocol), ("commit", commit), ("world size", str(world) if world else ""),
             ("code version", ", ".join(_values(ok, "version"))),
             ("torch", (manifest.get("packages") or {}).get("torch") or ", ".join(_values(ok, "torch"))),
             ("written", (report.written if report is not None else "") or manifest.get("written") or "")]
    return [(label, str(value) if value else "not recorded") for label, value in items]


def failed_points(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        if row.get("status", "ok") == "ok":
            continue
        point = ", ".join(f"{k}={row[k]}" for k in POINT_KEYS if row.get(k) not in (None, ""))
        out.append({"point": point or row.get("key", "?"), "status": row.get("status"), "error": row.get("error") or ""})
    return out


# ------------------------------------------------------------------------------ page sections


def report_of(results: Path) -> ReportData | None:
    """The folder's report.json, or None (a folder no kind wrote, or one written before reports existed:
    its page says how to rebuild it)."""
    path = results / REPORT_FILE
    return read_report(path) if path.is_file() else None


def tables_of(report: ReportData | None, results: Path, page_dir: Path) -> list[TableView]:
    """Every table of the report, the summary first, short tables before long ones (a per-point listing
    last), each linked to its CSV, LaTeX and Markdown."""
    if report is None:
        return []
    views = []
    for table in report.tables:
        files = {fmt: results / f"{table.stem}.{fmt}" for fmt in TABLE_FORMATS}
        links = {fmt: rel(path, page_dir) for fmt, path in files.items() if path.is_file()}
        views.append(table_view(table, links, f"table-{table.stem}"))
    return sorted(views, key=lambda v: (v.stem != "summary", len(v.rows) > LONG_TABLE))


def training_section(rows: Sequence[Mapping[str, Any]], results: Path, page_dir: Path) -> Training | None:
    finals = [r for r in rows if r.get("status", "ok") == "ok" and r.get("final_psnr") is not None]
    if not finals:
        return None
    arms: dict[str, Arm] = {}
    for row in finals:
        name = str(row.get("arm") or row.get("model") or row.get("variant"))
        arm = arms.setdefault(name, Arm(name, str(row.get("model") or row.get("variant") or ""), {}))
        arm.seeds[int(row.get("seed") or 0)] = float(row["final_psnr"])
    predictors = next((r["predictors"] for r in reversed(rows) if isinstance(r.get("predictors"), Mapping)), {})
    scored = {k: v.get("psnr") for k, v in predictors.items() if isinstance(v, Mapping) and v.get("psnr") is not None}
    bar_name = max(scored, key=scored.get) if scored else ""
    curves = [Figure(rel(results / name, page_dir), title, name) for name, title in
              (("psnr_vs_step.png", "validation PSNR against optimizer steps"),
               ("psnr_vs_seconds.png", "validation PSNR against training seconds"))
              if (results / name).is_file()]
    return Training(list(arms.values()), scored.get(bar_name), bar_name, curves)


def evaluation_section(rows: Sequence[Mapping[str, Any]], results: Path, page_dir: Path, site_dir: Path,
                       slug: str) -> Evaluation | None:
    scored = [r for r in rows if r.get("status", "ok") == "ok" and r.get("scene") and "psnr" in r]
    if not scored:
        return None
    models = list(dict.fromkeys(str(r.get("model")) for r in scored))
    scenes = list(dict.fromkeys(str(r["scene"]) for r in scored))
    metrics = [m for m in ("psnr", "ssim", "lpips") if any(r.get(m) is not None for r in scored)]
    by = {(str(r.get("model")), str(r["scene"])): r for r in scored}
    frame = pd.DataFrame([{"scene": scene, **{f"{m} {model}": by.get((model, scene), {}).get(m) for m in metrics for model in models},
                           "targets": next((by[(model, scene)].get("targets") for model in models if (model, scene) in by), None)}
                          for scene in scenes])
    csv_path = site_dir / "data" / slug / "per_scene_by_model.csv"
    _write_if_changed(csv_path, frame.to_csv(index=False, na_rep=""))
    table = table_data("per_scene_by_model", "Per scene: each model's scene mean (over its target views)", frame, [
        "one row per evaluated scene; sort by any column to find the scenes where one model leads; a scene links to its renders",
        "failed (model, scene) evaluations are left blank here and listed under failed points"],
        columns={"targets": {"role": "setting"}, **{f"{m} {model}": {"quantity": m} for m in metrics for model in models}})
    per_scene = table_view(table, {"csv": rel(csv_path, page_dir)}, "per-scene")
    strips, note = [], ""
    per_scene_dir = results / "scenes"
    grid = results / "grid.png"
    n_input = max((len((r.get("views") or {}).get("context") or r.get("context") or []) for r in scored), default=0)
    columns = [f"input {i + 1}" for i in range(n_input)] + ["ground truth (first target)"] + models
    if per_scene_dir.is_dir():
        for scene in scenes:
            if (per_scene_dir / f"{scene}.png").is_file():
                strips.append(SceneStrip(scene, rel(per_scene_dir / f"{scene}.png", page_dir), columns))
    elif grid.is_file():
        grid_scenes = int(((manifest_of(results).get("experiment") or {}).get("grid_scenes")) or 0)
        cut = strips_from_grid(grid, scenes[:grid_scenes], site_dir / "scenes" / slug) if grid_scenes else {}
        strips = [SceneStrip(scene, rel(path, page_dir), columns) for scene, path in cut.items()]
        note = (f"renders were recorded for the first {len(cut)} of {len(scenes)} scenes (the evaluation's grid figure, "
                f"cut into one strip per scene); the others have their numbers only" if cut else
                "renders: the evaluation's grid figure (below) could not be cut into one strip per scene")
    else:
        note = "no renders were recorded for this evaluation"
    linked = {strip.scene for strip in strips}
    for row in per_scene.rows:
        if row.cells and row.cells[0].text in linked:
            row.cells[0].href = f"#scene-{row.cells[0].text}"
    return Evaluation(per_scene, strips, note)


def _write_if_changed(path: Path, text: str) -> None:
    from ..records import write_atomic
    if not path.is_file() or path.read_text() != text:
        write_atomic(path, text)


def figures_of(results: Path, page_dir: Path, shown: set[str]) -> tuple[list[Figure], list[Figure]]:
    """Plots, and renders (files named render*), not shown elsewhere on the page."""
    plots, renders = [], []
    for path in sorted(results.rglob("*.png")):
        if page_dir.resolve() in path.resolve().parents:
            continue
        name = path.relative_to(results).as_posix()
        if name in shown:
            continue
        title = path.stem.replace("_", " ")
        (renders if path.stem.startswith("render") else plots).append(Figure(rel(path, page_dir), title, name))
    return plots, renders


def raw_links(results: Path, page_dir: Path) -> list[Link]:
    """rows.jsonl first, then the other records (JSON lines, JSON, Markdown notes) in the folder."""
    out = []
    for path in sorted(p for p in results.rglob("*") if p.is_file() and p.suffix in RAW_SUFFIXES):
        if page_dir.resolve() in path.resolve().parents or "runs" in path.relative_to(results).parts:
            continue
        if path.suffix == ".md" and path.with_suffix(".csv").is_file():  # a table's Markdown: linked beside its table
            continue
        out.append(Link(rel(path, page_dir), path.relative_to(results).as_posix()))
    out.sort(key=lambda link: (link.text != "rows.jsonl", link.text))
    return out


# ------------------------------------------------------------------------------------- pages


def load_specs(experiments_dir: Path) -> list[ExperimentBase]:
    """Every experiment YAML that validates; one that does not is left out with one line."""
    specs = []
    for path in sorted(experiments_dir.glob("*.yaml")):
        try:
            specs.append(load_experiment(path))
        except (HarnessError, ImportError, AttributeError) as error:  # e.g. a kind this checkout does not have
            print(f"site: skipped {path}: {' '.join(str(error).split())}")
    return in_paper_order(specs)


def published_of(dump: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The published rows an experiment compares with: its models' card table, then its own rows."""
    from models import label, list_models, model_card
    out = []
    names = [(m.get("model") or m.get("name")) if isinstance(m, Mapping) else m for m in dump.get("models") or []]
    table = dump.get("card_table")
    for name in dict.fromkeys(n for n in names if n in list_models()):
        entry = model_card(name).published.get(table) if table else None
        if entry is not None:
            out.append({"method": label(name), "numbers": ", ".join(f"{k} {v}" for k, v in entry.values.items()), "source": entry.source})
    published = dump.get("published") or {}
    for row in published.get("rows") or []:
        row = dict(row)
        method = row.pop("model", None) or row.pop("label", None) or ""
        source = row.pop("source", None) or published.get("source", "")
        out.append({"method": method, "numbers": ", ".join(f"{k} {v}" for k, v in row.items() if v is not None), "source": source})
    return out


def build_page(spec: ExperimentBase | None, results: Path, site_dir: Path, numbering: dict[int, int]) -> Page:
    rows = current_rows(results)
    manifest = manifest_of(results)
    dump = spec.model_dump(mode="json") if spec is not None else {}
    report = report_of(results)
    tables = tables_of(report, results, site_dir)
    headlines = list(report.headlines) if report is not None else []
    slug = spec.name if spec is not None else results.name
    paper = []
    for entry in (spec.paper if spec is not None else []):
        text = paper_status(spec, entry)
        cls = "ok" if text.startswith("measured") else "needs" if text.startswith("needs") else "missing"
        paper.append(PaperItem(numbering.get(id(entry), 0), entry.title, entry.published, entry.target, text, cls, headlines))
    training = training_section(rows, results, site_dir)
    evaluation = evaluation_section(rows, results, site_dir, site_dir, slug)
    strips = evaluation.strips if evaluation else []
    shown = {f.name for f in (training.curves if training else [])} | {f"scenes/{strip.scene}.png" for strip in strips}
    plots, renders = figures_of(results, site_dir, shown)
    ok = sum(1 for r in rows if r.get("status", "ok") == "ok" and "key" in r)
    counts = {"ok": ok, "failed": sum(1 for r in rows if r.get("status", "ok") != "ok"),
              "noisy": sum(t.noisy for t in tables)}
    yaml_link = None
    if spec is not None and spec.source_file:
        yaml_link = Link(rel(Path(spec.source_file), site_dir), Path(spec.source_file).name)
    if spec is not None:
        description = spec.description
    else:  # a folder of its own: the title of its first top-level table, else what it holds
        description = tables[0].title if tables else "figures: " + ", ".join(f.name for f in [*plots, *renders])
    return Page(slug=slug, name=spec.name if spec is not None else results.name, kind=spec.kind if spec is not None else "",
                description=description,
                results=results, yaml=yaml_link, paper=paper, headlines=headlines,
                provenance=provenance(manifest, rows, report), tables=tables, figures=plots, renders=renders,
                failed_points=failed_points(rows), raw=raw_links(results, site_dir), counts=counts,
                training=training, evaluation=evaluation, published=published_of(dump),
                setting=report.setting.describe() if report is not None else "", not_run=list(report.not_run) if report else [],
                report=report)


def build_pages(experiments_dir: Path, results_root: Path, site_dir: Path) -> tuple[list[Page], list[Page], list[PaperItem]]:
    """(experiment pages, pages of results folders no experiment claims, the paper index entries)."""
    specs = [rebase(s, results_root) for s in load_specs(experiments_dir)]
    numbering, number = {}, 0
    for spec in specs:
        for entry in spec.paper:
            number += 1
            numbering[id(entry)] = number
    pages = [build_page(spec, spec.results_dir(), site_dir, numbering) for spec in specs]
    claimed = {p.results.resolve() for p in pages}
    others = []
    for folder in sorted(p for p in results_root.iterdir() if p.is_dir()) if results_root.is_dir() else []:
        if folder.resolve() in claimed or folder.resolve() == site_dir.resolve() or site_dir.resolve() in folder.resolve().parents:
            continue
        if any(folder.rglob("*.csv")) or any(folder.rglob("*.png")):
            others.append(build_page(None, folder, site_dir, numbering))
    index = sorted((item for page in pages for item in page.paper), key=lambda item: item.number)
    link_same_points(pages)
    return pages, others, index


# The fields that make two timed rows the same measurement (what ran, where, on what).
SAME_POINT = ("model", "config", "n_input", "n_target", "device", "dtype", "threads", "batch", "numerics")


def link_same_points(pages: list[Page]) -> None:
    """Every latency that two experiments measured at the same point, on both pages, with why they differ:
    the measurement settings that differ between their rows, and when each was taken."""
    timed: dict[str, list[tuple[Page, dict[str, Any]]]] = {}
    for page in pages:
        for row in current_rows(page.results):
            if row.get("status", "ok") == "ok" and isinstance(row.get("latency_ms"), (int, float)) and row.get("model"):
                key = json.dumps({k: row.get(k) for k in SAME_POINT}, sort_keys=True, default=str)
                timed.setdefault(key, []).append((page, row))
    for entries in timed.values():
        for page, row in entries:
            for other, theirs in entries:
                if other is page:
                    continue
                mine, their = row.get("measure") or {}, theirs.get("measure") or {}
                settings = [f"{k} {mine.get(k)} vs {their.get(k)}" for k in sorted(set(mine) | set(their)) if mine.get(k) != their.get(k)]
                why = "; ".join(filter(None, [
                    f"timed at different times ({row.get('timestamp', '?')} vs {theirs.get('timestamp', '?')}), so the machine's "
                    "drift between them is in the difference", f"measured with {', '.join(settings)}" if settings else ""]))
                page.same_points.append(SamePoint(str(row["model"]), int(row.get("n_input") or 0), int(row.get("n_target") or 0),
                                                  float(row["latency_ms"]), float(theirs["latency_ms"]), other.name, why))
