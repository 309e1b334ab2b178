"""The resume key follows the code that measures a point: the kind's measuring module, the variant's
module and what they import from models/ and harness/, docstrings and comments aside. Every edit here
is made to a copy of the packages in a temporary folder, never to the checkout."""
from __future__ import annotations

import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

import harness.provenance as provenance
from harness.pipeline import Sweep
from harness.provenance import SourceTree, code_text, measured_by
from harness.records import current_rows

ROOT = Path(__file__).resolve().parent.parent
PROFILE = "harness.profile.kinds"  # a kind's measuring module


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of models/ and harness/ (their .py files)."""
    copy = tmp_path / "tree"

    def not_python(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if not n.endswith(".py") and not (Path(folder) / n).is_dir() or n == "__pycache__"]

    for package in provenance.PACKAGES:
        shutil.copytree(ROOT / package, copy / package, ignore=not_python)
    return copy


def version(root: Path, *modules: str) -> str:
    """A fresh read of the tree (the process-wide one reads every file once)."""
    return SourceTree.directory(root).version(*modules)


def edit(root: Path, path: str, old: str, new: str) -> None:
    file = root / path
    text = file.read_text()
    assert old in text, (path, old)
    file.write_text(text.replace(old, new, 1))


def append(root: Path, path: str, text: str) -> None:
    file = root / path
    file.write_text(file.read_text() + text)


def test_an_edit_to_the_site_tables_plots_or_a_report_changes_no_measurement_key(tree):
    keys = {name: version(tree, PROFILE, f"models.{name}") for name in ("efficient_lvsm", "lvsm_decoder_only")}
    evaluation = version(tree, "harness.evaluate.scoring", "models.lact")
    everything = version(tree)
    for path in ("harness/site/render.py", "harness/site/collect.py", "harness/tables.py", "harness/plots.py",
                 "harness/paper.py", "harness/profile/report.py", "harness/evaluate/report.py"):
        append(tree, path, "\n\ndef _extra():\n    return 1\n")  # code, not only a docstring
    assert {name: version(tree, PROFILE, f"models.{name}") for name in keys} == keys
    assert version(tree, "harness.evaluate.scoring", "models.lact") == evaluation
    assert version(tree) != everything  # the edits were read: the whole tree's version moved


def test_a_docstring_comment_or_layout_edit_of_a_model_module_changes_no_key(tree):
    before = version(tree, PROFILE, "models.efficient_lvsm")
    module = tree / "models" / "efficient_lvsm.py"
    text = module.read_text()
    assert text.startswith('"""')
    module.write_text('"""Another module docstring."""\n# a new comment\n\n\n' + text.split('"""', 2)[2])
    edit(tree, "models/efficient_lvsm.py", "class EfficientLVSM(", "# why this class exists\nclass EfficientLVSM(")
    append(tree, "models/layers.py", "\n\n# a trailing comment\n")
    assert version(tree, PROFILE, "models.efficient_lvsm") == before


def test_docstrings_inside_classes_and_functions_do_not_count_but_code_does():
    base = 'class A:\n    """Doc."""\n\n    def f(self):\n        """Doc."""\n        return 1\n'
    assert code_text(base) == code_text(base.replace('"""Doc."""', '"""Other words."""'))
    assert code_text(base) == code_text(base.replace("return 1", "return 1  # because"))
    assert code_text(base) != code_text(base.replace("return 1", "return 2"))
    only_doc = 'def f():\n    """Doc."""\n'
    assert code_text(only_doc) == code_text(only_doc.replace("Doc.", "More doc."))


def test_a_code_edit_of_a_model_module_or_of_what_it_imports_changes_its_key(tree):
    before = version(tree, PROFILE, "models.efficient_lvsm")
    append(tree, "models/efficient_lvsm.py", "\n_EDITED = 1\n")
    edited = version(tree, PROFILE, "models.efficient_lvsm")
    assert edited != before
    append(tree, "models/layers.py", "\n_EDITED = 1\n")  # imported by efficient_lvsm
    assert version(tree, PROFILE, "models.efficient_lvsm") != edited


def test_a_code_edit_of_the_measuring_code_changes_the_key(tree):
    before = version(tree, PROFILE, "models.lact")
    append(tree, "harness/profile/measure.py", "\n_EDITED = 1\n")  # imported by the profile kinds
    assert version(tree, PROFILE, "models.lact") != before


def test_one_variants_edit_leaves_the_other_variants_keys_alone(tree):
    names = ("efficient_lvsm", "lvsm_decoder_only", "lact", "lvsm_encoder_decoder")
    before = {name: version(tree, PROFILE, f"models.{name}") for name in names}
    assert len(set(before.values())) == len(names)
    append(tree, "models/lact.py", "\n_EDITED = 1\n")
    after = {name: version(tree, PROFILE, f"models.{name}") for name in names}
    assert [name for name in names if after[name] != before[name]] == ["lact"]


def test_imports_are_followed_within_the_packages_and_through_re_exports():
    tree = SourceTree.directory(ROOT)
    # Relative imports, `from . import submodule`, and a name a package only re-exports.
    imported = set(tree.imports("models.efficient_lvsm"))
    assert {"models.flops", "models.base", "models.layers", "models.tokens", "models.registry"} <= imported
    assert "harness.pipeline" in tree.imports(PROFILE) and "harness.profile.measure" in tree.imports(PROFILE)
    assert "models.registry" in tree.imports("harness.profile.measure")  # `from models import build_model`
    closure = tree.closure(PROFILE)
    # `from models import ...` does not reach every variant the package's __init__ imports.
    assert not {"models", "models.lact", "models.efficient_lvsm", "models.ablations"} & set(closure)
    assert not [m for m in closure if provenance._presentation(m)]  # tables, plots, report, site
    assert "models.efficient_lvsm" in tree.closure("models.ablations")  # transitively, through subclassing


def test_a_plugin_file_outside_the_repository_is_hashed_with_what_it_imports(tree, tmp_path, monkeypatch):
    plugin = tmp_path / "elsewhere" / "my_variant.py"
    plugin.parent.mkdir()
    plugin.write_text('"""A variant of my own."""\nfrom models import ModelCard, register\n'
                      'from models.efficient_lvsm import EfficientLVSM\n\n\nclass Mine(EfficientLVSM):\n    pass\n')
    name = "lvsm_bench_plugin_my_variant_test"
    module = types.ModuleType(name)
    module.__file__ = str(plugin)
    monkeypatch.setitem(sys.modules, name, module)
    assert {name, "models.efficient_lvsm", "models.registry"} <= set(SourceTree.directory(tree).closure(PROFILE, name))
    before = version(tree, PROFILE, name)
    plugin.write_text(plugin.read_text().replace("A variant of my own.", "Reworded."))
    assert version(tree, PROFILE, name) == before
    plugin.write_text(plugin.read_text().replace("    pass\n", "    depth = 3\n"))
    after = version(tree, PROFILE, name)
    assert after != before
    append(tree, "models/efficient_lvsm.py", "\n_EDITED = 1\n")  # what the plugin subclasses
    assert version(tree, PROFILE, name) != after


def test_measured_by_names_the_measuring_module_and_each_variants_and_sources_module():
    assert measured_by(PROFILE, "lact", "efficient_lvsm") == (PROFILE, "models.efficient_lvsm", "models.lact")
    assert measured_by(PROFILE, "efficient_lvsm_shared_weights") == (PROFILE, "models.ablations")
    assert measured_by("harness.evaluate.scoring", "lact", sources=["synthetic_scene"]) == (
        "harness.evaluate.scoring", "harness.data.synthetic", "models.lact")


def test_a_sweep_remeasures_only_the_points_whose_code_changed(tree, tmp_path, monkeypatch):
    monkeypatch.delenv("LVSM_BENCH_CODE_VERSION", raising=False)
    monkeypatch.setattr(provenance, "working_tree", lambda: SourceTree.directory(tree))
    points = [{"model": name, "n_input": 2} for name in ("efficient_lvsm", "lact")]
    code = lambda point: measured_by(PROFILE, point["model"])  # noqa: E731
    measured = []

    def measure(point):
        measured.append(point["model"])
        return {"latency_ms": 1.0}

    first = Sweep(tmp_path / "out", "exp", code=code)
    first.run(points, measure, progress=False)
    rows = first.rows(points)
    assert [r["code_modules"] for r in rows] == [[PROFILE, "models.efficient_lvsm"], [PROFILE, "models.lact"]]
    assert rows[0]["version"] != rows[1]["version"]
    append(tree, "harness/site/render.py", "\n_EDITED = 1\n")
    append(tree, "models/lact.py", '\n_EDITED = 1  # "lact" changed\n')
    again = Sweep(tmp_path / "out", "exp", code=code)
    assert again.pending(points) == [points[1]]
    again.run(points, measure, progress=False)
    assert measured == ["efficient_lvsm", "lact", "lact"]
    # What the tables show: each point's latest row, whichever version measured it.
    shown = current_rows(again.store.rows())
    assert [r["model"] for r in shown] == ["efficient_lvsm", "lact"] and shown[1]["version"] != rows[1]["version"]
    monkeypatch.setenv("LVSM_BENCH_CODE_VERSION", "pinned")
    assert Sweep(tmp_path / "out", "exp", code=code).version_of(points[0]) == "pinned"


def test_rows_recorded_before_point_ids_show_their_latest_code_version():
    old = [{"key": "a", "version": "src-1", "status": "ok"}, {"key": "b", "version": "src-2", "status": "error"},
           {"key": "b", "version": "src-2", "status": "ok"}]
    assert current_rows(old) == [{"key": "b", "version": "src-2", "status": "ok"}]
    new = [{"key": "c", "point_id": "p", "version": "code-1", "status": "ok"},
           {"key": "d", "point_id": "q", "version": "code-2", "status": "ok"},
           {"key": "e", "point_id": "p", "version": "code-3", "status": "ok"}]
    assert [r["key"] for r in current_rows(old + new)] == ["e", "d"]


def test_a_row_measured_with_uncommitted_code_is_named_by_the_commit_that_holds_that_code_of_its_modules():
    if subprocess.run(["git", "rev-parse", "HEAD~1"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("needs a git checkout with history")
    head, parent = (subprocess.run(["git", "rev-parse", "--short=10", rev], cwd=ROOT, capture_output=True, text=True)
                    .stdout.strip() for rev in ("HEAD", "HEAD~1"))
    modules = (PROFILE, "models.lact")
    committed = provenance.committed_code_version("HEAD", *modules)
    assert committed.startswith("code-")
    assert provenance.clean_commit(f"{parent}-dirty", committed, modules) in (head, parent)
    # A row written before keys followed the measuring code: the hash of every file of both packages.
    legacy = provenance._committed_source_hash("HEAD")
    assert legacy.startswith("src-") and provenance.clean_commit(f"{parent}-dirty", legacy) in (head, parent)


def test_a_rebuild_from_records_finds_a_point_by_what_it_measured(tmp_path):
    """--from-records: a row whose point predates a nested field still matches (the field is named), a row of
    another model does not, and a preset renamed (the same config under a new name) matches by its config."""
    from harness.pipeline import by_config
    sweep = Sweep(tmp_path, "e")
    old = {"model": "efficient_lvsm", "preset": "small", "overrides": {"image_size": 128, "dim": 256, "head_dim": 64},
           "config": {"dim": 256}, "n_input": 2}
    sweep.record(old, {"latency_ms": 1.0})
    sweep.record({**old, "model": "lvsm_decoder_only"}, {"latency_ms": 2.0})
    newer = {**old, "config": {"dim": 256, "camera_encoding": "plucker"}}
    rows, predated = sweep.recorded_rows([newer])
    assert [r["latency_ms"] for r in rows] == [1.0] and predated == {"config.camera_encoding"}
    renamed = {"model": "efficient_lvsm", "preset": "small128", "overrides": {}, "config": {"dim": 256}, "n_input": 2}
    assert sweep.recorded_rows([renamed])[0] == []
    assert [r["latency_ms"] for r in sweep.recorded_rows([renamed], by_config)[0]] == [1.0]
    other = {**renamed, "preset": "small"}  # small is 64 px: another model, however it is named
    assert sweep.recorded_rows([other], by_config)[0] == []
