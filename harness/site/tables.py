"""A table of a report (`report.json`) as the rows and cells of an HTML table. Everything shown comes
from the report's types: a column is shaded by its role (published, ratio, difference, setting), a
difference cell is coloured by better or worse along its quantity's direction (it exists only where the
report found the settings alike), and rows carry the status the report gave them."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..report import TableData

ROLE_CLASS = {"published": "pub", "ratio": "ratio", "difference": "diff", "setting": "setting"}
ROW_MARK = {"noisy": "noisy", "failed": "failed"}


@dataclass
class Cell:
    text: str
    sort: str = ""  # the raw value the sorting script compares (a number where the cell is one)
    cls: str = ""  # num, missing, better, worse
    href: str = ""  # where the cell links (a scene to its renders)


@dataclass
class Column:
    name: str
    cls: str = ""  # pub, ratio, diff, setting
    title: str = ""  # hover text: quantity, unit, better direction, setting


@dataclass
class Row:
    cells: list[Cell]
    cls: str = ""  # noisy, failed, published
    mark: str = ""  # the badge shown in the first cell
    anchor: str = ""


@dataclass
class Comparison:
    """A published column beside ours: subtracted (`difference` names the column) or not, with the fields
    whose settings differ."""
    ours: str
    published: str
    quantity: str
    difference: str
    differs: list[str]


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
    setting: str = ""  # where this table's own numbers come from, in one line


def number_text(value: float) -> str:
    """Four significant digits, thousands grouped; a value within 1e-12 of zero is 0 (no "-0.00", no "-1e-16")."""
    if abs(value) < 1e-12:
        return "0"
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}" if abs(value) >= 10_000 else str(int(value))
    if abs(value) >= 10_000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def format_value(value: Any) -> Cell:
    if value == "":
        return Cell("", "", "")
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return Cell("n/a", "", "missing")
    if isinstance(value, bool):
        return Cell("yes" if value else "no", str(value))
    if isinstance(value, (int, float)):
        return Cell(number_text(float(value)), repr(float(value)), "num")
    return Cell(str(value), str(value))


def _difference_cell(value: Any, better: str | None) -> Cell:
    cell = format_value(value)
    if cell.cls != "num" or abs(float(value)) < 1e-12:
        return cell
    text = ("+" if float(value) > 0 else "") + cell.text
    good = (float(value) > 0) == (better == "higher") if better else None
    return Cell(text, cell.sort, "num " + ("" if good is None else "better" if good else "worse"))


def _hover(column: Any, settings: Mapping[str, Any]) -> str:
    parts = [column.quantity or "", f"unit {column.unit}" if column.unit else "",
             f"{column.better} is better" if column.better else ""]
    if column.role in ("published", "difference") or column.setting != "ours":
        setting = settings.get(column.setting)
        parts.append(f"setting: {setting.describe()}" if setting is not None else "")
    return "; ".join(p for p in parts if p)


def table_view(table: TableData, links: Mapping[str, str], anchor: str) -> TableView:
    columns = [Column(c.name, ROLE_CLASS.get(c.role, ""), _hover(c, table.settings)) for c in table.columns]
    ours = table.settings.get("ours")
    view = TableView(table.stem, table.title, list(table.notes), columns, [], dict(links), anchor=anchor,
                     setting=ours.describe() if ours is not None else "")
    for comparison in table.comparisons:
        view.comparisons.append(Comparison(comparison.ours, comparison.published, comparison.quantity or "",
                                           comparison.difference or "", comparison.differs))
    for index, record in enumerate(table.rows):
        cells = [_difference_cell(record.get(c.name), c.better) if c.role == "difference" else format_value(record.get(c.name))
                 for c in table.columns]
        for cell, column in zip(cells, columns):
            cell.cls = " ".join(filter(None, [cell.cls, column.cls if column.cls != "diff" else ""]))
        status = table.status[index] if index < len(table.status) else "ok"
        row = Row(cells, "" if status == "ok" else status, ROW_MARK.get(status, ""), f"{anchor}-row-{index}")
        view.noisy += status == "noisy"
        view.failed += status == "failed"
        view.rows.append(row)
    return view
