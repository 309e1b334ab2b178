"""Where a measured number came from: code version, device, library versions, time."""
from __future__ import annotations

import ast
import datetime as _dt
import functools
import hashlib
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable

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


# The packages a resume key follows imports into; anything else imported (torch, the standard library)
# is pinned by the environment columns of a row, not by its key.
PACKAGES = ("models", "harness")
# Modules that only present what was measured: the key does not follow imports into them, so that
# reworking a table, a figure, the site or the paper index re-measures nothing.
PRESENTATION = ("harness.site", "harness.tables", "harness.plots", "harness.paper", "harness.cli", "harness.__main__",
                "harness.profile.report", "harness.evaluate.report", "harness.train.figures")


def _presentation(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in PRESENTATION)


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


def code_text(source: str | ast.Module) -> str:
    """The code of a module (its text, or its parsed tree, which is changed) without its docstrings,
    comments and layout: an edit to any of those leaves it unchanged, and so the resume keys; an edit
    to what runs does not. A text that does not parse is taken as it is (it cannot have measured anything)."""
    if isinstance(source, str):
        try:
            source = ast.parse(source)
        except SyntaxError:
            return source
    # unparse rather than ast.dump: dump lists every field of every node, and new Python versions add
    # fields, which would re-measure everything recorded under the older one.
    return ast.unparse(_strip_docstrings(source))


class SourceTree:
    """The modules of models/ and harness/ as one place holds them (a folder, or a commit), read and
    hashed once each. `read` takes a repository-relative path (or an absolute one, for a plugin outside
    the repository) and returns the file's text, or None where there is no such file."""

    def __init__(self, read: Callable[[str], str | None], paths: Iterable[str]):
        self._read, self.paths = read, sorted(paths)
        self._texts: dict[str, str | None] = {}
        self._trees: dict[str, ast.Module | None] = {}
        self._nodes: dict[str, tuple[str, tuple[str, ...]] | None] = {}
        self._versions: dict[tuple[str, ...], str] = {}

    @classmethod
    def directory(cls, root: Path) -> SourceTree:
        root = Path(root)

        def read(path: str) -> str | None:
            try:
                return (root / path).read_text(encoding="utf-8")
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None

        return cls(read, [p.relative_to(root).as_posix() for package in PACKAGES for p in root.glob(f"{package}/**/*.py")])

    def _text(self, path: str) -> str | None:
        if path not in self._texts:
            self._texts[path] = self._read(path)
        return self._texts[path]

    def file_of(self, module: str) -> str | None:
        """The file a module is read from: `a/b.py`, else the package's `a/b/__init__.py`; a module
        outside the packages (a plugin) is found where Python loaded it from."""
        if module.split(".", 1)[0] in PACKAGES:
            base = module.replace(".", "/")
            return next((path for path in (f"{base}.py", f"{base}/__init__.py") if self._text(path) is not None), None)
        file = getattr(sys.modules.get(module), "__file__", None)
        if not file:
            return None
        path = Path(file).resolve()
        return path.relative_to(REPO_ROOT).as_posix() if path.is_relative_to(REPO_ROOT) else str(path)

    def _tree(self, module: str) -> ast.Module | None:
        if module not in self._trees:
            path = self.file_of(module)
            try:
                self._trees[module] = ast.parse(self._text(path)) if path else None
            except SyntaxError:
                self._trees[module] = None
        return self._trees[module]

    def _is_package(self, module: str) -> bool:
        return (self.file_of(module) or "").endswith("__init__.py")

    def _absolute(self, module: str, node: ast.ImportFrom) -> str | None:
        """The module a `from ... import` names, relative levels resolved against `module`'s package."""
        if not node.level:
            return node.module
        package = module if self._is_package(module) else module.rpartition(".")[0]
        parts = package.split(".") if package else []
        if node.level - 1 > len(parts) or not parts:
            return None  # a relative import outside any package (a plugin file): nothing of ours
        parts = parts[:len(parts) - (node.level - 1)]
        return ".".join(parts + ([node.module] if node.module else []))

    def _target(self, base: str, name: str, seen: frozenset[tuple[str, str]] = frozenset()) -> str:
        """The module whose code `from base import name` runs: the submodule `base.name` if there is one;
        a name a package only re-exports (`from .registry import build_model` in its `__init__`) is
        followed to where it is defined, so that importing one name from `models` does not pull in
        every variant the package imports; else `base` itself."""
        if base.split(".", 1)[0] not in PACKAGES:
            return base
        if name != "*" and self.file_of(f"{base}.{name}"):
            return f"{base}.{name}"
        tree = self._tree(base) if name != "*" and self._is_package(base) else None
        for node in tree.body if tree else ():
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    source = self._absolute(base, node)
                    if (alias.asname or alias.name) == name and source and (source, alias.name) not in seen:
                        return self._target(source, alias.name, seen | {(base, name)})
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname == name and self.file_of(alias.name):
                        return alias.name
        return base

    def imports(self, module: str) -> tuple[str, ...]:
        """The modules of ours that `module` imports, anywhere in it (an import inside a function runs
        when that function does)."""
        tree, found = self._tree(module), set()
        for node in ast.walk(tree) if tree else ():
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = self._absolute(module, node)
                if base and base.split(".", 1)[0] in PACKAGES:
                    found.update(self._target(base, alias.name) for alias in node.names)
        return tuple(sorted(m for m in found if m.split(".", 1)[0] in PACKAGES and m != module and self.file_of(m)))

    def _node(self, module: str) -> tuple[str, tuple[str, ...]] | None:
        """(hash of the module's code, the modules it imports); None where it has no file."""
        if module not in self._nodes:
            path = self.file_of(module)
            text, tree = (self._text(path), self._tree(module)) if path else (None, None)
            if text is None:
                self._nodes[module] = None
            else:
                found = self.imports(module)
                # Stripping the cached tree in place spares a second parse; what is read from it later
                # (a package's re-exports) are imports, which stripping leaves alone.
                self._nodes[module] = (hashlib.sha1(code_text(tree or text).encode()).hexdigest(), found)
        return self._nodes[module]

    def closure(self, *modules: str) -> dict[str, str]:
        """Module -> code hash of `modules` and everything of ours they import, transitively, leaving
        out the presentation modules they reach."""
        found: dict[str, str] = {}
        todo = list(modules)
        while todo:
            module = todo.pop()
            if module in found:
                continue
            node = self._node(module)
            found[module] = node[0] if node else ""
            todo += [m for m in (node[1] if node else ()) if m not in found and not _presentation(m)]
        return found

    def modules(self) -> list[str]:
        """Every module of the packages."""
        return [path.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for path in self.paths]

    def version(self, *modules: str) -> str:
        """The code version of `modules` and what they import; no modules: of every module of the packages."""
        roots = tuple(sorted(set(modules))) or tuple(self.modules())
        if roots not in self._versions:
            digest = hashlib.sha1()
            for module, code in sorted(self.closure(*roots).items()):
                digest.update(f"{module} {code}\n".encode())
            self._versions[roots] = f"code-{digest.hexdigest()[:12]}"
        return self._versions[roots]


@functools.lru_cache(maxsize=1)
def working_tree() -> SourceTree:
    """This checkout's sources; each file is read and hashed once per process."""
    return SourceTree.directory(REPO_ROOT)


def code_version(*modules: str) -> str:
    """What a record's resume key pins: the code of `modules` (the kind's measuring module, the
    variants' modules, a plugin's) and of what they import from models/ and harness/, docstrings and
    comments aside; a measurement whose code changed is measured again, one whose code did not
    resumes. No modules: every module of models/ and harness/. `LVSM_BENCH_CODE_VERSION` overrides it."""
    return os.environ.get("LVSM_BENCH_CODE_VERSION") or working_tree().version(*modules)


def measured_by(measuring: str, *variants: str, sources: Iterable[str] = ()) -> tuple[str, ...]:
    """The modules whose code makes a point's numbers: the kind's measuring module, each variant's class
    module and each data source's (a plugin's file for one a plugin registered). They are named here
    because following imports does not reach them: the registries get them from their package's
    `__init__`, which imports every variant and source, and the key does not follow that."""
    from models import model_class

    from .data import registry  # importing the package registers the built-in sources
    return (measuring, *sorted({model_class(name).__module__ for name in variants}
                               | {registry.SOURCES.get(name).__module__ for name in sources}))


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU as timings depend on it: its marketing name, its family and model where /proc/cpuinfo gives them
    (a cloud CPU's name can be as bare as "AMD EPYC", shared by generations that differ twofold in speed), and the
    vector kernels PyTorch dispatches to here (AVX512, AVX2, ...; ATEN_CPU_CAPABILITY lowers them)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
            if not line.strip():
                break  # the first processor describes them all
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    generation = (f", family {fields['cpu family']} model {fields['model']}"
                  if fields.get("cpu family") and fields.get("model") else "")
    return f"{name}{generation}, {torch.backends.cpu.get_cpu_capability()} kernels"


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {cpu_model()} ({torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''})"


def numerics_text(choices: dict[str, str] | None) -> str:
    """A model's precision choices (`numerics`) as one phrase, e.g. "newton_schulz bfloat16 (native kernel)";
    '' for none."""
    return "; ".join(f"{key} {value}" for key, value in (choices or {}).items())


def devices_of(rows) -> str:
    """Every device the rows were measured on, in one line: rows merged across machines name them all."""
    return "; ".join(sorted({str(r["device"]) for r in rows if r.get("device")}))


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


def _committed_files(commit: str, *folders: str) -> dict[str, bytes] | None:
    """Path -> content of the .py files committed at `commit` (under `folders`; all without); None outside git."""
    try:
        names = [n for n in _git("ls-tree", "-r", "--name-only", commit, "--", *folders).decode().splitlines()
                 if n.endswith(".py")]
        blobs = _git("cat-file", "--batch", data="".join(f"{commit}:{n}\n" for n in names).encode())
    except (OSError, subprocess.SubprocessError):
        return None
    files, at = {}, 0
    for name in names:
        header_end = blobs.index(b"\n", at)
        size = int(blobs[at:header_end].split()[2])
        files[name] = blobs[header_end + 1:header_end + 1 + size]
        at = header_end + 1 + size + 1
    return files


@functools.lru_cache(maxsize=4)
def committed_tree(commit: str) -> SourceTree | None:
    """The sources as committed at `commit` (None outside git); a plugin outside the repository is read
    from disk."""
    files = _committed_files(commit)
    if files is None:
        return None

    def read(path: str) -> str | None:
        if Path(path).is_absolute():
            try:
                return Path(path).read_text(encoding="utf-8")
            except OSError:
                return None
        blob = files.get(path)
        return None if blob is None else blob.decode("utf-8", errors="replace")

    return SourceTree(read, [n for n in files if n.split("/", 1)[0] in PACKAGES])


@functools.cache
def committed_code_version(commit: str, *modules: str) -> str | None:
    """`code_version(*modules)` as the code stood at `commit` (None outside git)."""
    tree = committed_tree(commit)
    return None if tree is None else tree.version(*modules)


@functools.cache
def _committed_source_hash(commit: str) -> str | None:
    """The version rows recorded before keys followed the measuring code (`src-...`): every byte of
    every .py file of models/ and harness/ at `commit`."""
    files = _committed_files(commit, *PACKAGES)
    if files is None:
        return None
    digest = hashlib.sha1()
    for name in sorted(files, key=Path):
        digest.update(Path(name).as_posix().encode())
        digest.update(files[name])
    return f"src-{digest.hexdigest()[:12]}"


@functools.cache
def clean_commit(commit: str, version: str, modules: tuple[str, ...] = ()) -> str:
    """The commit that names the code a row was measured with. A row measured in a tree with uncommitted
    changes records `<base>-dirty`, its code version and the modules that version covers (`code_modules`);
    the code was usually committed right after, so this is the first commit after `<base>` whose code
    of those modules hashes to that version; when none does: `<base> + uncommitted changes (code <version>)`."""
    if not commit.endswith("-dirty"):
        return commit
    base = commit.removesuffix("-dirty")
    try:
        later = _git("rev-list", "--reverse", f"{base}..HEAD").decode().split()
    except (OSError, subprocess.SubprocessError):
        later = []
    for candidate in later:
        found = (_committed_source_hash(candidate) if version.startswith("src-")
                 else committed_code_version(candidate, *modules))
        if found == version:
            return candidate[:len(base)]
    return f"{base} + uncommitted changes (code {version})"
