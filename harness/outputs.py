"""An output folder: writable, owned by one experiment, used by one process at a time.

A run proves its folder writable before any work starts, refuses a folder whose manifest (or rows)
name another experiment, and holds `run.lock` (the holder's PID, host and command) until it ends. A
lock left by a process that no longer runs (killed, machine restarted) is taken over with a warning;
a live holder's lock refuses the run with one line. The lock is released when the command ends, or
when the process exits.

The ledger of one command (`with ledger() as book:`) collects the sweeps it opened, the points it asked
each for and the locks it took, whatever the kind: the command's exit status (any point whose latest
row failed) and its interrupt line (points recorded) are read from it, never from what a kind returns.
"""
from __future__ import annotations

import atexit
import contextlib
import contextvars
import json
import logging
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from .errors import OutputError

log = logging.getLogger(__name__)

LOCK = "run.lock"
MANIFEST = "manifest.json"
ROWS = "rows.jsonl"


def rank_rows(out_dir: Path, rank: int | str) -> Path:
    """Where rank `rank` (not 0) of a distributed run appends its rows until rank 0 moves them to ROWS."""
    return Path(out_dir) / f"rows.rank{rank}.jsonl"
# Tells this process's locks from a dead process's that had the same PID (PIDs repeat across containers).
_TOKEN = uuid.uuid4().hex
_HELD: dict[Path, "FolderLock"] = {}


def ensure_writable(out_dir: str | Path) -> Path:
    """Create the output directory and prove it writable before any work starts."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise OutputError(f"output directory {out_dir}: cannot be created or written ({error.strerror or error})") from None
    return out_dir


# ------------------------------------------------------------------------------------ ownership


def owner(out_dir: Path) -> tuple[str, str] | None:
    """(experiment name, where it is written) of the experiment that owns `out_dir`, or None when
    nothing there names one. The manifest says it; a folder with rows but no manifest yet (a run
    killed before writing it) is owned by the experiment its first row names."""
    manifest = out_dir / MANIFEST
    if manifest.is_file():
        try:
            name = json.loads(manifest.read_text()).get("experiment", {}).get("name")
        except (OSError, ValueError, AttributeError):
            name = None
        if isinstance(name, str) and name:
            return name, str(manifest)
    rows = out_dir / ROWS
    if rows.is_file():
        with rows.open() as handle:
            for line in handle:
                try:
                    name = json.loads(line).get("experiment")
                except (ValueError, AttributeError):
                    continue
                if isinstance(name, str) and name:
                    return name, str(rows)
    return None


def check_owner(out_dir: Path, experiment: str) -> None:
    """Refuse to write experiment `experiment` into a folder another experiment owns: their rows
    would share one file and the second would overwrite the first's tables and manifest."""
    found = owner(out_dir)
    if found and found[0] != experiment:
        name, where = found
        raise OutputError(f"output directory {out_dir} belongs to experiment {name!r} (named in {where}); experiment "
                          f"{experiment!r} may not write there: give it its own output_dir (--set output_dir=...)")


# ----------------------------------------------------------------------------------------- lock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        return True
    return True


class FolderLock:
    """`out_dir/run.lock`, created exclusively, holding this process's PID, host and command."""

    def __init__(self, out_dir: Path, experiment: str):
        self.path = out_dir / LOCK
        self.experiment = experiment
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "experiment": experiment,
                     "command": " ".join(sys.argv), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "token": _TOKEN}

    def _write_new(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            json.dump(self.info, handle)
        return True

    def _holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable (cut short while written): no live holder can be named
        return holder if isinstance(holder, dict) else {}

    def acquire(self) -> "FolderLock":
        for _ in range(3):  # another process may take or drop the lock between our looks
            if self._write_new():
                return self
            holder = self._holder()
            if holder is None:
                continue
            if holder.get("token") == _TOKEN:
                return self
            self._take_over_or_refuse(holder)
            tmp = self.path.with_name(f".{LOCK}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.info))
            os.replace(tmp, self.path)
            if (self._holder() or {}).get("token") == _TOKEN:
                return self
        raise OutputError(f"{self.path}: could not be taken (other processes keep taking it); try again")

    def _take_over_or_refuse(self, holder: dict[str, Any]) -> None:
        pid, host = holder.get("pid"), holder.get("host")
        who = f"PID {pid} on host {host}" + (f" since {holder['since']}" if holder.get("since") else "")
        what = f" ({holder.get('experiment')}: {holder.get('command')})" if holder.get("command") else ""
        if not isinstance(pid, int) or not host:
            log.warning("%s: unreadable lock file taken over", self.path)
            return
        if host != self.info["host"]:
            raise OutputError(f"output directory {self.path.parent} is in use by {who}{what}; a process on another host "
                              f"cannot be checked from here: if it no longer runs, delete {self.path}")
        if _alive(pid) and not (pid == os.getpid() and holder.get("token") != _TOKEN):
            raise OutputError(f"output directory {self.path.parent} is in use by {who}{what}; wait for it to finish "
                              "(one process at a time per output folder), or give this run another output_dir")
        log.warning("%s: taking over the lock of %s, which no longer runs (stopped without releasing it)", self.path, who)

    def release(self) -> None:
        if os.getpid() != self.info["pid"]:  # a forked child never drops its parent's lock
            return
        if (self._holder() or {}).get("token") == _TOKEN:
            self.path.unlink(missing_ok=True)
        _HELD.pop(self.path.parent.resolve(), None)


def lock(out_dir: Path, experiment: str) -> tuple[FolderLock, bool]:
    """This process's lock on `out_dir` (taken now, or already held), and whether it was taken now."""
    key = out_dir.resolve()
    if key in _HELD:
        return _HELD[key], False
    taken = _HELD[key] = FolderLock(out_dir, experiment).acquire()
    return taken, True


@atexit.register
def _release_all() -> None:
    for held in list(_HELD.values()):
        try:
            held.release()
        except OSError:
            pass


# ---------------------------------------------------------------------------------- the ledger


@dataclass
class Outcome:
    """What one command left in the rows of the points it asked for."""
    points: int = 0
    recorded: int = 0  # points with a row
    failed: list[str] = field(default_factory=list)  # "experiment: point: reason" of points whose latest row failed


@dataclass
class Ledger:
    """The sweeps one command opened, the points it asked each for and the folder locks it took:
    every kind's exit status and interrupt line come from here, never from what a kind returns."""
    sweeps: dict[int, tuple[Any, dict[str, str]]] = field(default_factory=dict)
    locks: list[FolderLock] = field(default_factory=list)

    def track(self, sweep: Any, labels: dict[str, str]) -> None:
        known = self.sweeps.setdefault(id(sweep), (sweep, {}))[1]
        for key, name in labels.items():
            if name or key not in known:
                known[key] = name

    def outcome(self) -> Outcome:
        result = Outcome()
        for sweep, labels in self.sweeps.values():
            latest = sweep.store.latest_by_key()
            for key, name in labels.items():
                result.points += 1
                row = latest.get(key)
                if row is None:
                    continue
                result.recorded += 1
                if row.get("status") != "ok":
                    where = name or _point_text(row)
                    result.failed.append(f"{sweep.experiment}: {where}: {row.get('error') or row.get('status')}")
        return result

    def release(self) -> None:
        for held in reversed(self.locks):
            held.release()
        self.locks.clear()


_LEDGER: contextvars.ContextVar[Ledger | None] = contextvars.ContextVar("ledger", default=None)


def current_ledger() -> Ledger | None:
    return _LEDGER.get()


@contextlib.contextmanager
def ledger() -> Iterator[Ledger]:
    """Track what the enclosed run records; release the folders it took when it ends (also on Ctrl-C)."""
    book = Ledger()
    token = _LEDGER.set(book)
    try:
        yield book
    finally:
        _LEDGER.reset(token)
        book.release()


def _point_text(row: Mapping[str, Any]) -> str:
    """A failed row's point in a few words, when its kind gave no label."""
    shown = [f"{k}={row[k]}" for k in ("model", "variant", "arm", "scene", "n_input", "n_target", "seed") if k in row]
    return ", ".join(shown) or str(row.get("key"))
