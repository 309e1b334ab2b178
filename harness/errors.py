"""The errors a user can cause, at the bottom of the package (standard library only).

Every mistake a user can make (a bad experiment value, data that is not there, a checkpoint that is
not one, a device that is absent) raises a `HarnessError` whose message is one line naming the file,
key or value and what was expected. The CLI prints that line as `error: ...` and exits 2; any other
exception is a bug and keeps its traceback.
"""
from __future__ import annotations


class HarnessError(Exception):
    """A user mistake or a missing resource; the message is one self-contained line."""

    # Raised alike by every rank of a distributed run (a refusal rank 0 decided for all): rank 0 alone prints it.
    every_rank = False


class ConfigError(HarnessError, ValueError):
    """A bad experiment file, `--set` override, command-line option or config value."""


class DataError(HarnessError, ValueError):
    """Bad data on disk, or a bad request to a data source (names the file, scene, frame or key)."""


class CheckpointError(HarnessError, ValueError):
    """A file that is not a usable checkpoint (not a torch file, truncated, another variant's weights)."""


class DeviceError(HarnessError, RuntimeError):
    """A device that was asked for and is not present (e.g. `device=cuda` without CUDA)."""


class MissingResource(HarnessError, FileNotFoundError):
    """Something this machine cannot download (weights, a dataset, a backbone) is not where it was
    looked for; the message says which file and how to provide it."""


class OutputError(HarnessError, OSError):
    """An output directory that cannot be created or written (checked before any work starts)."""
