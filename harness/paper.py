"""The paper index: every table and figure of the two papers that an experiment covers (its `paper:`
entries), run where this machine can, skipped with one line where it cannot, and listed in
results/README.md with its make target, its status and our headline beside the published one.

`python -m harness paper` (make paper) runs every experiment that fits this machine (each resumes from
its rows, so a finished one only rebuilds its tables), then regenerates the index; `--index-only`
regenerates the index from what is recorded. The index is never edited by hand.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import HarnessError
from .provenance import clean_commit, devices_of
from .records import RecordStore, current_rows, write_atomic
from .report import REPORT_FILE, Fact, ReportData, read_report
from .schema import ExperimentBase, PaperEntry, RunOptions, load_experiment, run_spec

log = logging.getLogger(__name__)

# The order `make paper` runs them in: cheap counts first, then measurements, then training and what
# reads its checkpoints.
ORDER = ["flops", "efficiency_table", "bench", "kv_cache", "render_one_more_target", "speed_vs_views", "op_profile",
         "convergence", "eval", "view_generalization", "depth_study", "ablations", "camera_encoding", "camera_encoding_views",
         "camera_encoding_cost", "table_re10k", "table_objects"]


@dataclass
class Entry:
    spec: ExperimentBase
    paper: PaperEntry


def in_paper_order(specs: list[ExperimentBase]) -> list[ExperimentBase]:
    """The experiments in ORDER; those it does not name last, in the order given."""
    return sorted(specs, key=lambda s: ORDER.index(s.name) if s.name in ORDER else len(ORDER))


def entries(experiments_dir: str | Path = "experiments") -> list[Entry]:
    specs = [load_experiment(path) for path in sorted(Path(experiments_dir).glob("*.yaml"))]
    return [Entry(spec, paper) for spec in in_paper_order(specs) for paper in spec.paper]


def missing(paper: PaperEntry) -> str:
    """What this machine lacks for the entry, in one line; empty when it can run."""
    absent = [name for name in paper.needs_env if not os.environ.get(name)]
    if absent:
        return f"needs {', '.join(absent)}" + (f": {paper.needs}" if paper.needs else "")
    if paper.needs_cuda and not torch.cuda.is_available():
        return "needs a CUDA GPU" + (f": {paper.needs}" if paper.needs else "")
    return ""


def run_all(experiments_dir: str | Path = "experiments", progress: bool = True, from_records: bool = False) -> None:
    """Every experiment of the index that this machine can run, in ORDER; `from_records`: each one's report
    rebuilt from its recorded rows, nothing measured."""
    done: set[str] = set()
    for entry in entries(experiments_dir):
        spec = entry.spec
        if spec.name in done:
            continue
        lacking = missing(entry.paper)
        if from_records and not (spec.results_dir() / "rows.jsonl").is_file():
            done.add(spec.name)
            continue
        if lacking and not from_records:
            print(f"paper: skipped {spec.name} ({entry.paper.title}): {lacking}")
            done.add(spec.name)
            continue
        start = time.perf_counter()
        print(f"paper: {spec.name} ({entry.paper.title}) ...", flush=True)
        try:
            run_spec(spec, RunOptions(progress=progress, from_records=from_records))
        except HarnessError as error:  # one study that cannot run (a missing file) does not stop the others
            print(f"paper: skipped {spec.name}: {' '.join(str(error).split())}")
        log.info("paper: %s took %.0f s", spec.name, time.perf_counter() - start)
        done.add(spec.name)


def status(spec: ExperimentBase, paper: PaperEntry) -> str:
    rows = RecordStore(spec.results_dir() / "rows.jsonl").rows()
    ok = [r for r in rows if r.get("status") == "ok"]
    manifest_path = spec.results_dir() / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    shown = set(manifest.get("rows_shown") or ())
    if shown:  # tables built from rows of several code versions (--from-records) name the rows they show
        ok, rows = [r for r in ok if r.get("key") in shown], [r for r in rows if r.get("key") in shown]
    else:  # the rows the current tables show: the latest of each point
        rows = current_rows(rows)
        ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        lacking = missing(paper)
        return lacking or f"not run yet (`make {paper.target}`)"
    # Rows that measure nothing on a device (e.g. a cost counted from shapes) do not name one.
    device = devices_of(ok) or manifest.get("device") or "a device not recorded"
    # A row measured in a tree with uncommitted changes is named by the commit that holds its code.
    commits = sorted({clean_commit(str(r["commit"]), str(r.get("version", "")), tuple(r.get("code_modules") or ()))
                      for r in ok if r.get("commit")})
    preset = manifest.get("preset") or manifest.get("experiment", {}).get("preset")
    scale = f", preset {preset}" if preset else ""
    failed = len(rows) - len(ok)
    return (f"measured here: {len(ok)} rows on {device}{scale}, commit {', '.join(commits) or '?'}"
            + (f"; {failed} failed rows" if failed else "") + (f"; at full scale it {missing(paper)}" if missing(paper) else ""))


def report_of(spec: ExperimentBase) -> ReportData | None:
    path = spec.results_dir() / REPORT_FILE
    return read_report(path) if path.is_file() else None


@dataclass
class GlanceCell:
    text: str
    experiment: str = ""
    table: str = ""
    row: int = 0


@dataclass
class Glance:
    """The one-screen comparison: one row per variant, one column per fact quantity of the experiments on the
    index (`on_index`), each cell pointing at the table row it comes from; and each column's setting."""
    columns: list[str]
    sources: dict[str, str]  # column -> experiment
    settings: dict[str, str]  # experiment -> its setting in one line
    rows: list[tuple[str, dict[str, GlanceCell]]]  # (variant, column -> cell)


def _fact_text(fact: Fact) -> str:
    if fact.unit == "x":
        return f"{fact.value:.2f}x"
    text = f"{fact.value:.2f}" + (f" {fact.unit}" if fact.unit == "dB" else "")
    if fact.low is not None and fact.high is not None and fact.high > fact.low:
        text += f" ({fact.low:.2f}-{fact.high:.2f})"
    return text


def glance(specs: list[ExperimentBase]) -> Glance:
    """From the reports of `specs` (in paper order) that are `on_index`."""
    from models import list_models
    columns: list[str] = []
    sources: dict[str, str] = {}
    settings: dict[str, str] = {}
    cells: dict[str, dict[str, GlanceCell]] = {}
    units: dict[str, str] = {}
    seen: set[str] = set()
    for spec in specs:
        if not spec.on_index or spec.name in seen:
            continue
        seen.add(spec.name)
        report = report_of(spec)
        if report is None:
            continue
        settings[spec.name] = report.setting.describe()
        for fact in report.facts:
            if fact.quantity not in sources:
                columns.append(fact.quantity)
                sources[fact.quantity] = spec.name
                units[fact.quantity] = fact.unit
            if sources[fact.quantity] == spec.name:
                cells.setdefault(fact.variant, {})[fact.quantity] = GlanceCell(_fact_text(fact), spec.name, fact.table,
                                                                               fact.row)
    order = [name for name in list_models() if name in cells] + [name for name in cells if name not in list_models()]
    # Speed-ups first, then exponents, quality and sizes: the order a reader compares designs in.
    columns.sort(key=lambda c: ["x", "", "dB", "M"].index(units[c]) if units[c] in ("x", "", "dB", "M") else 4)
    return Glance(columns, sources, settings, [(name, cells[name]) for name in order])


def glance_markdown(view: Glance) -> list[str]:
    from models import label
    if not view.rows:
        return []
    lines = ["## At a glance", "", "| variant | " + " | ".join(view.columns) + " |", "|---" * (len(view.columns) + 1) + "|"]
    for name, cells in view.rows:
        lines.append(f"| {label(name)} | " + " | ".join(
            f"[{cells[c].text}]({cells[c].experiment}/{cells[c].table}.md)" if c in cells else "n/a" for c in view.columns) + " |")
    lines += ["", "Where each column was measured (compare across columns only what carries over: ratios, exponents, orderings):"]
    lines += [f"- {experiment}: {setting}" for experiment, setting in view.settings.items()]
    return lines + [""]


def write_index(experiments_dir: str | Path = "experiments", out: str | Path = "results/README.md") -> Path:
    lines = ["# Results: the paper index", "",
             "Generated by `make paper` (`python -m harness paper --index-only` rebuilds it from the recorded rows); "
             "do not edit by hand. One entry per table or figure of LVSM (Jin et al., ICLR 2025) and Efficient-LVSM "
             "(Jia et al., ICLR 2026) that the harness covers: its make target, its status here, and our headline "
             "numbers beside the published ones (each table states where every number came from). A commit names the "
             "code the rows were measured with: a row measured with uncommitted changes records `<commit>-dirty` and "
             "a hash of the code that measured it; the index names the first later commit that holds exactly that code.", ""]
    lines += glance_markdown(glance([entry.spec for entry in entries(experiments_dir)]))
    for number, entry in enumerate(entries(experiments_dir), 1):
        spec, paper = entry.spec, entry.paper
        results = spec.results_dir()
        lines += [f"## {number}. {paper.title}", "",
                  f"- published: {paper.published}",
                  f"- make target: `make {paper.target}` (experiments/{Path(spec.source_file).name})",
                  f"- status: {status(spec, paper)}",
                  f"- results: [{results}]({Path(*results.parts[1:]) if results.parts[0] == 'results' else results})"]
        report = report_of(spec)
        if report is not None:
            lines.append(f"- setting: {report.setting.describe()}")
            if report.headlines:
                lines += ["- headline (ours, then published where the table has it):"]
                lines += [f"  - {line}" for line in report.headlines]
            lines += [f"- not run: {reason}" for reason in report.not_run]
        lines.append("")
    path = Path(out)
    write_atomic(path, "\n".join(lines))
    return path
