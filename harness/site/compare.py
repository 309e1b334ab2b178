"""Published numbers beside ours: which columns (or rows) of a written table pair up, and their difference.

Tables name their columns by a few conventions, and the pairing follows them, never a list of
experiments or methods:
- `X (ours...)` and `X (published...)` with the same qualifier after ours/published;
- `X` and `published X`, or `X` and `published_X`;
- a row whose `weights` (or `source`) cell says `published` beside a measured row of the same first cell
  (an evaluation summary: the card's numbers under the measured model's row);
- a training study's `published` column, which holds what its arm's `published_<field>` says: a PSNR
  (beside `psnr_mean`) or a difference to the reference arm (beside `diff_vs_reference_db`).
A difference is ours minus published; a published range `a to b` gives a range of differences.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

_RANGE = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*(?:to|\.\.|–)\s*([-+]?\d+(?:\.\d+)?)\s*(?:dB)?\s*$")


def number(value: Any) -> float | None:
    """A finite float from a cell, or None (text, n/a, empty)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(float(value)) else None
    try:
        parsed = float(str(value).strip())
    except ValueError:
        return None
    return parsed if math.isfinite(parsed) else None


def span(value: Any) -> tuple[float, float] | None:
    """A published value as (low, high): a number gives (v, v); `-1.3 to -2` gives (-2, -1.3)."""
    single = number(value)
    if single is not None:
        return single, single
    match = _RANGE.match(str(value or ""))
    if not match:
        return None
    a, b = float(match.group(1)), float(match.group(2))
    return min(a, b), max(a, b)


@dataclass(frozen=True)
class Difference:
    low: float
    high: float

    @property
    def sign(self) -> str:
        """`pos`, `neg` or `zero`; a range that straddles zero is `mixed`."""
        if self.low > 0:
            return "pos"
        if self.high < 0:
            return "neg"
        if self.low == self.high == 0:
            return "zero"
        return "mixed"

    def text(self) -> str:
        if self.low == self.high:
            return f"{self.low:+.4g}"
        return f"{self.high:+.4g} to {self.low:+.4g}" if abs(self.high) < abs(self.low) else f"{self.low:+.4g} to {self.high:+.4g}"


def difference(ours: Any, published: Any) -> Difference | None:
    value, bounds = number(ours), span(published)
    if value is None or bounds is None:
        return None
    return Difference(value - bounds[1], value - bounds[0])


@dataclass(frozen=True)
class ColumnPair:
    ours: str
    published: str


def _qualifier(name: str, word: str) -> str | None:
    """`latency ms (ours)` with word `ours` -> `latency ms ()`; None when the word is not the qualifier."""
    marker = f"({word}"
    if marker not in name:
        return None
    return name.replace(marker, "(", 1)


def column_pairs(columns: Sequence[str]) -> list[ColumnPair]:
    """(ours, published) column pairs of one table, by name: `X (published...)` with `X (ours...)`,
    `published X` with `X`, `published_X` with `X` or `X_mean`. A column named `published` alone is in
    none: what it is published for varies by row (see `arm_published_columns`)."""
    pairs: list[ColumnPair] = []
    names = list(columns)
    for pub in names:
        ours = None
        stem = _qualifier(pub, "published")
        if stem is not None:
            ours = next((c for c in names if c != pub and _qualifier(c, "ours") == stem), None)
        elif pub.startswith("published ") and pub[len("published "):] in names:
            ours = pub[len("published "):]
        elif pub.startswith("published_"):
            base = pub[len("published_"):]
            ours = next((c for c in (base, f"{base}_mean") if c in names), None)
        if ours is not None:
            pairs.append(ColumnPair(ours, pub))
    return pairs


def is_published_row(row: Mapping[str, Any], columns: Sequence[str]) -> bool:
    """A row of published numbers: a cell after the first says `published` (a weights, source or mode column)."""
    return any(str(row.get(c) or "").strip().lower().split(":")[0] == "published" for c in columns[1:])


def row_pairs(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> dict[int, int]:
    """Measured row index -> its published twin's index: a published row with the same first cell."""
    if not rows or not columns:
        return {}
    key = columns[0]
    published = {str(r.get(key)): i for i, r in enumerate(rows) if is_published_row(r, columns)}
    return {i: published[str(r.get(key))] for i, r in enumerate(rows)
            if not is_published_row(r, columns) and str(r.get(key)) in published}


def arm_published_columns(arms: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Arm name -> the summary column its `published` value sits beside, from the arm's own
    `published_<field>` key (a difference to the reference, or an absolute PSNR)."""
    out = {}
    for arm in arms:
        if arm.get("published_diff_db") is not None:
            out[str(arm.get("name"))] = "diff_vs_reference_db"
        elif arm.get("published_psnr") is not None:
            out[str(arm.get("name"))] = "psnr_mean"
    return out
