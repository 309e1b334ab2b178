"""Append-only JSON-lines records: one row per measured point, written as soon as it exists.

A row's key is (experiment, point, code version); a rerun skips points already recorded with the
same key, so an interrupted sweep resumes where it stopped and nothing measured is lost.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping


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
        rows = []
        with self.path.open() as handle:
            for line in handle:
                line = line.strip()
                if not line:
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return rows

    def done_keys(self, statuses: Iterable[str] = ("ok",)) -> set[str]:
        wanted = set(statuses)
        return {r["key"] for r in self.rows() if "key" in r and r.get("status", "ok") in wanted}

    def append(self, row: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(row, sort_keys=True, default=str) + "\n"
        # One write of one line in append mode, flushed to disk, so a crash loses at most this row.
        with self.path.open("a") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def latest_by_key(self) -> dict[str, dict[str, Any]]:
        """The last row for every key (a failed point retried later is superseded)."""
        latest: dict[str, dict[str, Any]] = {}
        for row in self.rows():
            if "key" in row:
                latest[row["key"]] = row
        return latest


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
