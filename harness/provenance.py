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


def _git(*args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(["git", *args], cwd=REPO_ROOT, input=data, capture_output=True, check=True, timeout=60).stdout


@functools.cache
def committed_code_version(commit: str) -> str | None:
    """`code_version()` of models/ and harness/ as committed at `commit` (None outside git)."""
    try:
        names = [n for n in _git("ls-tree", "-r", "--name-only", commit, "--", "models", "harness").decode().splitlines()
                 if n.endswith(".py")]
        names.sort(key=Path)  # the order source_hash reads them in
        blobs = _git("cat-file", "--batch", data="".join(f"{commit}:{n}\n" for n in names).encode())
    except (OSError, subprocess.SubprocessError):
        return None
    digest, at = hashlib.sha1(), 0
    for name in names:
        header_end = blobs.index(b"\n", at)
        size = int(blobs[at:header_end].split()[2])
        digest.update(Path(name).as_posix().encode())
        digest.update(blobs[header_end + 1:header_end + 1 + size])
        at = header_end + 1 + size + 1
    return f"src-{digest.hexdigest()[:12]}"


@functools.cache
def clean_commit(commit: str, version: str) -> str:
    """The commit that names the code a row was measured with. A row measured in a tree with uncommitted
    changes records `<base>-dirty` and its code version (the hash of models/ and harness/); the code was
    usually committed right after, so this is the first commit after `<base>` whose code hashes to that
    version; when none does: `<base> + uncommitted changes (code <version>)`."""
    if not commit.endswith("-dirty"):
        return commit
    base = commit.removesuffix("-dirty")
    try:
        later = _git("rev-list", "--reverse", f"{base}..HEAD").decode().split()
    except (OSError, subprocess.SubprocessError):
        later = []
    for candidate in later:
        if committed_code_version(candidate) == version:
            return candidate[:len(base)]
    return f"{base} + uncommitted changes (code {version})"
