"""Append-only JSON-lines records: one row per measured point, written as soon as it exists.

A row's key is (experiment, point, code version); a rerun skips points already recorded with the
same key, so an interrupted sweep resumes where it stopped and nothing measured is lost.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

log = logging.getLogger(__name__)
# The row field naming the keys whose NaN/Inf values were written as null.
NON_FINITE = "non_finite"


def point_key(experiment: str, point: Mapping[str, Any], version: str) -> str:
    blob = json.dumps({"experiment": experiment, "point": point, "version": version}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


class RecordStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def rows(self) -> list[dict[str, Any]]:
        """Every complete row; a torn last line (a crash mid-write) is ignored."""
        if not self.path.exists():
            return []
        rows, torn = [], 0
        with self.path.open() as handle:
            for line in handle:
                line = line.strip()
                if not line:
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    torn += 1
        if torn and torn != getattr(self, "_torn_reported", 0):
            # Said once per count, not on every read: resuming a sweep reads the file many times.
            self._torn_reported = torn
            log.warning("%s: %d unreadable line(s) skipped (a write interrupted by a crash)", self.path, torn)
        return rows

    def done_keys(self, statuses: Iterable[str] = ("ok",)) -> set[str]:
        wanted = set(statuses)
        return {r["key"] for r in self.rows() if "key" in r and r.get("status", "ok") in wanted}

    def append(self, row: Mapping[str, Any]) -> None:
        """Append one row as one JSON line. NaN/Inf values are written as null and the row's
        `non_finite` field names their keys: bare NaN tokens are not JSON, and other readers
        (jq, pandas with a strict parser, browsers) reject the whole file for one of them."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        clean, bad = _finite(dict(row), "")
        if bad:
            clean[NON_FINITE] = sorted(set(clean.get(NON_FINITE) or []) | set(bad))
        line = json.dumps(clean, sort_keys=True, default=str, allow_nan=False) + "\n"
        # One write of one line in append mode, flushed to disk, so a crash loses at most this row.
        # After such a crash the file ends in a fragment without its newline; the new row must start
        # on a line of its own, or it is glued onto the fragment and lost with it.
        if self._ends_torn():
            line = "\n" + line
        with self.path.open("a") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def _ends_torn(self) -> bool:
        try:
            with self.path.open("rb") as handle:
                handle.seek(0, os.SEEK_END)
                if handle.tell() == 0:
                    return False
                handle.seek(-1, os.SEEK_END)
                return handle.read(1) != b"\n"
        except FileNotFoundError:
            return False

    def latest_by_key(self) -> dict[str, dict[str, Any]]:
        """The last row for every key (a failed point retried later is superseded)."""
        latest: dict[str, dict[str, Any]] = {}
        for row in self.rows():
            if "key" in row:
                latest[row["key"]] = row
        return latest


def _finite(value: Any, where: str) -> tuple[Any, list[str]]:
    """`value` with every non-finite float replaced by None, and the dotted keys where that happened."""
    if isinstance(value, Mapping):
        out, bad = {}, []
        for key, item in value.items():
            out[key], found = _finite(item, f"{where}.{key}" if where else str(key))
            bad += found
        return out, bad
    if isinstance(value, (list, tuple)):
        out, bad = [], []
        for k, item in enumerate(value):
            clean, found = _finite(item, f"{where}[{k}]")
            out.append(clean)
            bad += found
        return out, bad
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and not math.isfinite(float(value)):
        return None, [where]
    return value, []


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write to a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            handle.write(data)
        # mkstemp creates 0600; results are meant to be read by anyone the umask allows.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
