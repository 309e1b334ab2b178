"""Where a measured number came from: code version, device, library versions, time."""
from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import os
import platform
import subprocess
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """Short commit hash, suffixed `-dirty` when tracked files differ from it; `unknown` outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "models", "harness"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.lru_cache(maxsize=1)
def source_hash() -> str:
    """Hash of the code that produces measurements (models/ and harness/ sources). Unlike the
    commit, it does not change when results or docs are committed, so a rerun still resumes."""
    digest = hashlib.sha1()
    for path in sorted([*REPO_ROOT.glob("models/**/*.py"), *REPO_ROOT.glob("harness/**/*.py")]):
        digest.update(path.relative_to(REPO_ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def code_version() -> str:
    """What a record's resume key pins: measurements made by other code are measured again."""
    return os.environ.get("LVSM_BENCH_CODE_VERSION") or f"src-{source_hash()}"


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {cpu_model()} ({torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''})"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def environment(device: torch.device | str) -> dict[str, object]:
    return {
        "device": device_name(device),
        "device_type": torch.device(device).type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "commit": git_commit(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
