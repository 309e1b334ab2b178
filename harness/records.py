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

from .errors import OutputError

log = logging.getLogger(__name__)
# The row field naming the keys whose NaN/Inf values were written as null.
NON_FINITE = "non_finite"


def point_key(experiment: str, point: Mapping[str, Any], version: str) -> str:
    blob = json.dumps({"experiment": experiment, "point": point, "version": version}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def point_id(experiment: str, point: Mapping[str, Any]) -> str:
    """A point whatever code measured it: the rows of one point under several code versions share it."""
    blob = json.dumps({"experiment": experiment, "point": point}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def current_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows the tables show: the latest row of each point, whichever code version measured it (one
    variant's rows may be newer than another's). Rows written before rows named their point (no `point_id`)
    count only while no row does, and then those of the latest code version recorded."""
    rows = [dict(r) for r in rows if "key" in r]
    if any(r.get("point_id") for r in rows):
        latest: dict[str, dict[str, Any]] = {}
        for row in rows:
            if row.get("point_id"):
                latest[row["point_id"]] = row
        return list(latest.values())
    by_key: dict[str, dict[str, Any]] = {}
    for row in rows:
        by_key[row["key"]] = row
    rows = list(by_key.values())
    ok = [r for r in rows if r.get("status", "ok") == "ok" and r.get("version")]
    return [r for r in rows if r.get("version") == ok[-1]["version"]] if ok else rows


class RecordStore:
    """One JSON-lines file. A row is appended whole or not at all: an append that fails (no space,
    an I/O error, an interrupt) cuts the file back to its size before the append and stops with
    one line; after a failure the store refuses further appends, so nothing lands after a hole."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._reported: set[int] = set()
        self._failure: str | None = None

    def _read(self) -> tuple[list[dict[str, Any]], list[tuple[int, str, str]]]:
        """(rows, unreadable lines as (line number, reason, text))."""
        rows: list[dict[str, Any]] = []
        bad: list[tuple[int, str, str]] = []
        if not self.path.exists():
            return rows, bad
        with self.path.open(newline="") as handle:
            for number, text in enumerate(handle, 1):
                line = text.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    cut = not text.endswith("\n")
                    bad.append((number, "cut short: a write stopped by a crash" if cut else f"not JSON ({error.msg} at "
                                f"column {error.colno})", text))
                    continue
                if isinstance(row, dict):
                    rows.append(row)
                else:
                    bad.append((number, f"a JSON {type(row).__name__}, not a row object", text))
        return rows, bad

    def rows(self) -> list[dict[str, Any]]:
        """Every readable row; unreadable lines are skipped and named once per store (a sweep reads the
        file many times). `set_aside_unreadable` moves them out of the file for good."""
        rows, bad = self._read()
        fresh = [b for b in bad if b[0] not in self._reported]
        if fresh:
            self._reported.update(number for number, _, _ in fresh)
            log.warning("%s: %s skipped; the next run of its experiment moves %s to %s", self.path, _describe(fresh),
                        "it" if len(fresh) == 1 else "them", self.side_file.name)
        return rows

    @property
    def side_file(self) -> Path:
        return self.path.with_name(self.path.name + ".unreadable")

    def set_aside_unreadable(self) -> int:
        """Move every unreadable line to `<file>.unreadable` and rewrite the file without them (atomically),
        saying so in one warning: a bad line is reported once, not on every rerun. Call it only while
        holding the folder (no other writer). Returns how many lines were moved."""
        rows, bad = self._read()
        if not bad:
            return 0
        numbers = {number for number, _, _ in bad}
        with self.path.open(newline="") as handle:
            kept = [text if text.endswith("\n") else text + "\n"
                    for number, text in enumerate(handle, 1) if number not in numbers and text.strip()]
        # The side file first: a crash between the two writes leaves a line in both files, never in neither.
        self._to_side_file(bad)
        write_atomic(self.path, "".join(kept))
        self._reported.clear()
        log.warning("%s: %s moved to %s; %d rows kept, and a rerun measures again what %s held (to keep %s instead, "
                    "fix %s there and append %s to %s)", self.path, _describe(bad), self.side_file, len(rows),
                    "it" if len(bad) == 1 else "they", "it" if len(bad) == 1 else "them",
                    "it" if len(bad) == 1 else "them", "it" if len(bad) == 1 else "them", self.path.name)
        return len(bad)

    def _to_side_file(self, bad) -> None:
        """Append unreadable lines (as `_read` reports them) to the side file, on disk before returning."""
        with self.side_file.open("a") as handle:
            handle.writelines(text if text.endswith("\n") else text + "\n" for _, _, text in bad)
            handle.flush()
            os.fsync(handle.fileno())

    def done_keys(self, statuses: Iterable[str] = ("ok",)) -> set[str]:
        wanted = set(statuses)
        return {r["key"] for r in self.rows() if "key" in r and r.get("status", "ok") in wanted}

    def append(self, row: Mapping[str, Any]) -> None:
        """Append one row as one JSON line. NaN/Inf values are written as null and the row's
        `non_finite` field names their keys: bare NaN tokens are not JSON, and other readers
        (jq, pandas with a strict parser, browsers) reject the whole file for one of them."""
        self.extend([row])

    def extend(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append rows as `append` does, all in one write: all of them land, or none."""
        if self._failure:
            raise OutputError(self._failure)
        line = "".join(_json_line(row) for row in rows)
        if not line:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # After a crash mid-write the file ends in a fragment without its newline; the new row must start
        # on a line of its own, or it is glued onto the fragment and lost with it.
        if self._ends_torn():
            line = "\n" + line
        existed = self.path.exists()
        size = self.path.stat().st_size if existed else 0
        try:
            _append_bytes(self.path, line.encode())
        except BaseException as error:
            self._restore(existed, size)
            if not isinstance(error, OSError):
                raise  # an interrupt: the file is as it was, the caller stops
            reason = (error.strerror or str(error)).lower() if error.errno else str(error)
            self._failure = f"{self.path}: {reason}; {self._count_rows()} rows kept, rerun to resume"
            raise OutputError(self._failure) from None

    def _restore(self, existed: bool, size: int) -> None:
        """Cut the file back to `size` bytes (removing it if the append created it)."""
        try:
            if existed:
                os.truncate(self.path, size)
            else:
                self.path.unlink(missing_ok=True)
        except OSError as error:
            raise OutputError(f"{self.path}: an append failed and the file could not be cut back to its {size} bytes "
                              f"({error.strerror or error}); remove its last partial line by hand, then rerun") from None

    def _count_rows(self) -> int:
        try:
            with self.path.open("rb") as handle:
                return sum(1 for line in handle if line.strip())
        except FileNotFoundError:
            return 0

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

    def absorb(self, other: "RecordStore") -> int:
        """Move the rows of `other` (another rank's file) to the end of this one, then remove it; a line
        cut short there (its writer was killed) goes to this file's side file, as `set_aside_unreadable`
        would move it. A crash between the two steps leaves rows in both files: the copies carry the
        same keys, and a key's latest row is the one read. Returns how many rows moved."""
        rows, bad = other._read()
        if bad:
            self._to_side_file(bad)
            log.warning("%s: %s moved to %s (its rank was stopped while writing them); a rerun measures them again",
                        other.path, _describe(bad), self.side_file)
        self.extend(rows)
        other.path.unlink(missing_ok=True)
        return len(rows)

    def latest_by_key(self) -> dict[str, dict[str, Any]]:
        """The last row for every key (a failed point retried later is superseded)."""
        latest: dict[str, dict[str, Any]] = {}
        for row in self.rows():
            if "key" in row:
                latest[row["key"]] = row
        return latest


def _json_line(row: Mapping[str, Any]) -> str:
    clean, bad = _finite(dict(row), "")
    if bad:
        clean[NON_FINITE] = sorted(set(clean.get(NON_FINITE) or []) | set(bad))
    return json.dumps(clean, sort_keys=True, default=str, allow_nan=False) + "\n"


def _append_bytes(path: Path, data: bytes) -> None:
    """Write `data` at the end of `path` and flush it to disk (os.write may write part of it: loop)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _describe(bad: list[tuple[int, str, str]]) -> str:
    """"line 7 unreadable (reason)" or "lines 3, 7 unreadable (line 3: reason; line 7: reason)"."""
    if len(bad) == 1:
        return f"line {bad[0][0]} unreadable ({bad[0][1]})"
    shown = bad[:5]
    more = f"; and {len(bad) - len(shown)} more" if len(bad) > len(shown) else ""
    return (f"lines {', '.join(str(n) for n, _, _ in bad)} unreadable ("
            + "; ".join(f"line {n}: {reason}" for n, reason, _ in shown) + more + ")")


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
    mode = "wb" if isinstance(data, bytes) else "w"
    tmp = ""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, mode) as handle:
            handle.write(data)
        # mkstemp creates 0600; results are meant to be read by anyone the umask allows.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as error:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, OutputError):
            # A full disk or an I/O error: one line; the previous file (if any) is untouched.
            raise OutputError(f"{path}: {(error.strerror or str(error)).lower()}; the file was not written "
                              "(the previous version, if any, is kept)") from None
        raise
