"""A written table (its `.csv`, and the title and provenance notes heading its `.md`) as the rows and
cells of an HTML table: numbers formatted with their raw value kept for sorting, published values
beside ours with the difference, noisy and failed rows marked."""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .compare import arm_published_columns, column_pairs, difference, is_published_row, number, row_pairs

_LEADING_NUMBER = re.compile(r"^[-+]?\d+(\.\d+)?(?=\s)")
MISSING = ("", "n/a", "nan", "none", "None")
_FALSY = ("", "n/a", "nan", "none", "false", "no", "0")


@dataclass
class Cell:
    text: str
    sort: str = ""  # the raw value the sorting script compares (a number where the cell is one)
    cls: str = ""  # num, pos, neg, mixed, missing, noisy-mark, failed-mark


@dataclass
class Column:
    name: str
    cls: str = ""  # pub (a published column), diff (a difference we add)
    title: str = ""  # hover text


@dataclass
class Row:
    cells: list[Cell]
    cls: str = ""  # noisy, failed, published
    mark: str = ""  # the badge shown in the first cell


@dataclass
class Comparison:
    """One published value beside ours in a table: the row (its first cell), what is compared, both values
    and the difference."""
    row: str
    quantity: str
    ours: Cell
    published: Cell
    diff: Cell


@dataclass
class TableView:
    stem: str
    title: str
    notes: list[str]
    columns: list[Column]
    rows: list[Row]
    links: dict[str, str] = field(default_factory=dict)  # format -> href
    comparisons: list[Comparison] = field(default_factory=list)
    noisy: int = 0
    failed: int = 0
    anchor: str = ""


def format_value(raw: str) -> Cell:
    if raw.strip() in MISSING:
        return Cell("n/a", "", "missing")
    value = number(raw)
    if value is None:
        lead = _LEADING_NUMBER.match(raw)  # `4 (training N)` sorts as 4 among the numbers
        return Cell(raw, repr(float(lead.group(0))) if lead else raw)
    if value.is_integer() and "." not in raw and "e" not in raw.lower():
        return Cell(f"{int(value):,}" if abs(value) >= 10_000 else str(int(value)), repr(value), "num")
    return Cell(f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:.4g}", repr(value), "num")


def read_markdown_header(path: Path) -> tuple[str, list[str]]:
    """`# title` and the `- note` lines above the table of a written `.md`."""
    title, notes = path.stem, []
    if not path.is_file():
        return title, notes
    for line in path.read_text().splitlines():
        if line.startswith("# ") and title == path.stem:
            title = line[2:].strip()
        elif line.startswith("- "):
            notes.append(line[2:].strip())
        elif line.startswith("|"):
            break
    return title, notes


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _is_noisy(row: Mapping[str, str]) -> bool:
    return any(k.lower() == "noisy" and str(v).strip().lower() not in _FALSY for k, v in row.items())


def _is_failed(row: Mapping[str, str]) -> bool:
    failed = number(row.get("failed"))
    return bool(failed) or any(str(v).lower().startswith("not measured") for v in row.values())


def _diff_cell(ours: Any, published: Any) -> Cell:
    diff = difference(ours, published)
    if diff is None:
        return Cell("", "", "missing")
    return Cell(diff.text(), repr(diff.low), f"num diff {diff.sign}")


def table_view(csv_path: Path, href: Mapping[str, str], arms: Sequence[Mapping[str, Any]] = ()) -> TableView:
    """The table written as `csv_path` (its `.md` beside it gives the title and notes)."""
    title, notes = read_markdown_header(csv_path.with_suffix(".md"))
    names, records = read_csv(csv_path)
    pairs = {p.published: p for p in column_pairs(names)}
    arm_columns = arm_published_columns(arms) if "published" in names and "arm" in names else {}
    twins = row_pairs(records, names)
    twin_metrics = [c for c in names if twins and any(number(records[i].get(c)) is not None and number(records[j].get(c)) is not None
                                                      for i, j in twins.items())]
    columns: list[Column] = []
    for name in names:
        is_pub = name in pairs or name.startswith("published") or "(published" in name
        columns.append(Column(name, "pub" if is_pub else ""))
        if name in pairs:
            columns.append(Column(f"Δ {pairs[name].ours}", "diff", f"{pairs[name].ours} minus {name}: ours − published"))
        elif name == "published" and arm_columns:
            columns.append(Column("Δ vs published", "diff", "ours − published, for the column the arm's published value describes "
                                  "(" + ", ".join(sorted(set(arm_columns.values()))) + ")"))
    for metric in twin_metrics:
        columns.append(Column(f"Δ {metric}", "diff", f"{metric} of this row minus its published row's: ours − published"))
    view = TableView(csv_path.stem, title, notes, columns, [], links=dict(href), anchor=f"table-{csv_path.stem}")
    published_rows = {i for i, r in enumerate(records) if is_published_row(r, names)}
    for index, record in enumerate(records):
        cells: list[Cell] = []
        label = str(record.get(names[0]) or "") if names else ""

        def compared(ours_column: str, ours: Any, published: Any, label: str = label) -> Cell:
            cell = _diff_cell(ours, published)
            if cell.text:
                view.comparisons.append(Comparison(label, ours_column, format_value(str(ours)), format_value(str(published)), cell))
            return cell
        for name in names:
            cells.append(format_value(record.get(name) or ""))
            if name in pairs:
                cells.append(compared(pairs[name].ours, record.get(pairs[name].ours), record.get(name)))
            elif name == "published" and arm_columns:
                ours_column = arm_columns.get(str(record.get("arm")))
                cells.append(compared(ours_column, record.get(ours_column), record.get(name)) if ours_column else Cell("", "", "missing"))
        for metric in twin_metrics:
            cells.append(compared(metric, record.get(metric), records[twins[index]].get(metric)) if index in twins
                         else Cell("", "", "missing"))
        row = Row(cells)
        if _is_failed(record):
            row.cls, row.mark = "failed", "failed"
            view.failed += 1
        elif _is_noisy(record):
            row.cls, row.mark = "noisy", "noisy"
            view.noisy += 1
        elif index in published_rows:
            row.cls = "published"
        view.rows.append(row)
    return view
