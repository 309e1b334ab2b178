"""Harness core: records, atomic writes, tables, the experiment schema (strict types, dotted-key errors,
extends, --set), the registry's cards, plugins, the CLI's one-line errors and the package layering."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import ALL_VARIANTS
from harness.cli import main
from harness.errors import ConfigError
from harness.records import RecordStore, point_key, write_atomic
from harness.runtime import AUTO_PRESET, resolve_device
from harness.schema import KINDS, apply_overrides, load_experiment, with_preset
from harness.report import ReportData, read_report, table_data, write_report_json, write_table_files
from models import build_model, config_class, list_models, model_card

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))


def test_record_store_skips_torn_lines_and_keeps_latest(tmp_path):
    store = RecordStore(tmp_path / "rows.jsonl")
    a = point_key("exp", {"n": 1}, "v1")
    store.append({"key": a, "status": "error", "value": None})
    store.append({"key": a, "status": "ok", "value": 3})
    with store.path.open("a") as handle:
        handle.write('{"key": "torn", "sta')  # a crash mid-write
    assert [r["value"] for r in store.rows()] == [None, 3]
    assert store.done_keys() == {a}
    store.append({"key": "b", "status": "ok", "value": 4})  # the next row after the torn one is kept
    assert [r["value"] for r in store.rows()] == [None, 3, 4] and store.done_keys() == {a, "b"}
    assert store.latest_by_key()[a]["value"] == 3
    assert point_key("exp", {"n": 1}, "v2") != a and point_key("exp", {"n": 1}, "v1") == a


def test_write_atomic_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "t.md"
    write_atomic(path, "one")
    write_atomic(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["t.md"]


def test_a_report_table_renders_its_notes_and_no_nan_and_reads_back_typed(tmp_path):
    df = pd.DataFrame([{"model": "m", "psnr": 20.123456, "lpips": None, "steps": 1250},
                       {"model": "k", "psnr": 19.5, "lpips": 0.25, "steps": float("nan")}])
    table = table_data("t", "Title", df, ["measured: cpu, float32"])
    paths = write_table_files(table, tmp_path)
    md = paths["md"].read_text()
    assert "measured: cpu, float32" in md and "n/a" in md and "20.12" in md and "1250" in md
    assert "nan" not in md and "nan" not in paths["tex"].read_text()
    assert paths["csv"].read_text().splitlines()[0] == "model,psnr,lpips,steps"
    assert "\\toprule" in paths["tex"].read_text()
    write_report_json(ReportData(experiment="e", kind="profile", title="e", tables=[table]), tmp_path)
    back = read_report(tmp_path / "report.json")
    assert back.tables[0].rows[1]["steps"] is None  # NaN is never written
    assert [(c.role, c.quantity, c.better) for c in back.tables[0].columns] == [
        ("label", None, None), ("ours", "psnr", "higher"), ("ours", "lpips", "lower"), ("ours", "steps", "lower")]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "report.json").write_text('{"schema_version": 1, "experiment": "e"}')
    with pytest.raises(ConfigError, match=r"bad/report.json: not a report of schema 1 \(kind: Field required\)"):
        read_report(tmp_path / "bad" / "report.json")


# ------------------------------------------------------------------------------- the schema


def test_overrides_parse_yaml_values_and_name_bad_ones():
    data = apply_overrides({"a": {"b": 1}}, ["a.b=3", "c=[1, 2]"], "e.yaml")
    assert data == {"a": {"b": 3}, "c": [1, 2]}
    with pytest.raises(ConfigError, match=r"e.yaml: --set a.b.c: a.b is not a mapping"):
        apply_overrides({"a": {"b": 1}}, ["a.b.c=2"], "e.yaml")
    with pytest.raises(ConfigError, match=r"e.yaml: --set c: value '\[1,' is not valid YAML"):
        apply_overrides({}, ["c=[1,"], "e.yaml")
    with pytest.raises(ConfigError, match=r"expected KEY=VALUE"):
        apply_overrides({}, ["novalue"], "e.yaml")


def test_unknown_nested_key_is_named_by_its_dotted_path():
    with pytest.raises(ConfigError, match=r"bench.yaml: measure.warmupp: unknown key$"):
        load_experiment(ROOT / "experiments" / "bench.yaml", ["measure.warmupp=2"])


def test_strict_types_are_not_coerced(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("kind: profile_flops\nbatch: 1.5\n")
    with pytest.raises(ConfigError, match=r"e.yaml: batch: Input should be a valid integer"):
        load_experiment(path)
    path.write_text("kind: profile_flops\nmodels: lvsm_decoder_only\n")
    with pytest.raises(ConfigError, match=r"e.yaml: models: Input should be a valid list"):
        load_experiment(path)


def test_extends_builds_on_another_file_and_children_override(tmp_path):
    (tmp_path / "base.yaml").write_text("kind: profile\npreset: tiny\nn_inputs: [1, 2]\nmeasure: {warmup: 2, runs: 7}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nn_inputs: [4]\nmeasure: {runs: 3}\n")
    spec = load_experiment(tmp_path / "child.yaml")
    assert (spec.name, spec.preset, spec.n_inputs) == ("child", "tiny", [4])
    assert (spec.measure.warmup, spec.measure.runs) == (2, 3)  # nested keys merge
    bench = load_experiment(ROOT / "experiments" / "bench.yaml")
    assert bench.kind == "profile" and bench.models == load_experiment(ROOT / "experiments" / "speed_vs_views.yaml").models
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_experiment(tmp_path / "loop.yaml")


def test_one_preset_rule_for_every_kind():
    """`--preset` sets every model built from a preset, never a checkpoint's; `auto` is resolved once, against
    the device the kind runs its models on (FLOPs are counted on the meta device: the paper preset)."""
    here = AUTO_PRESET[resolve_device().type]
    evaluate = load_experiment(ROOT / "experiments" / "eval_synthetic.yaml", [
        "models=[{name: efficient_lvsm}, {name: lvsm_decoder_only, checkpoint: x.pt}, {name: lvsm_encoder_decoder, preset: auto}]"])
    assert [m.preset for m in with_preset(evaluate).models] == ["small", "small", here]
    assert [m.preset for m in with_preset(evaluate, "auto").models] == [here, "small", here]
    assert [m.preset for m in with_preset(evaluate, "tiny").models] == ["tiny", "small", "tiny"]
    assert with_preset(load_experiment(ROOT / "experiments" / "bench.yaml"), "auto").preset == here
    assert with_preset(load_experiment(ROOT / "experiments" / "flops.yaml"), "auto").preset == "paper"
    assert with_preset(load_experiment(ROOT / "experiments" / "convergence.yaml"), "auto").preset == here
    from harness.train import TrainExperiment
    train = TrainExperiment.model_validate({"kind": "train", "name": "t", "model": {"name": "lvsm_decoder_only", "preset": "tiny"}})
    assert (with_preset(train).model.preset, with_preset(train, "auto").model.preset) == ("tiny", here)
    with pytest.raises(ConfigError, match="view_generalization.*comes from a checkpoint"):
        with_preset(load_experiment(ROOT / "experiments" / "view_generalization.yaml"), "tiny")


def test_experiments_are_frozen():
    spec = load_experiment(ROOT / "experiments" / "flops.yaml")
    with pytest.raises(Exception, match="frozen"):
        spec.preset = "tiny"


# ------------------------------------------------------------------------------ the registry


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_every_variant_has_a_card_and_refuses_fields_its_config_lacks(name):
    card, config = model_card(name), config_class(name)
    assert card.label and card.color and isinstance(build_model(name, "tiny").config, config)
    foreign = next(f for f in ("depth", "stream_depth", "n_latents") if f not in config.field_names())
    with pytest.raises(ValueError, match=f"model '{name}' has no config field '{foreign}'; its fields: image_size"):
        build_model(name, "tiny", **{foreign: 3})
    for field in config.own_fields():  # each of its own fields reaches the model it builds
        choices = config.CHOICES.get(field)
        value = choices[-1] if choices else 2 if field != "latent_init_std" else 1.0
        assert build_model(name, "tiny", **{field: value}).config.to_dict()[field] == value


WINDOWED = ROOT / "tests" / "plugins" / "windowed.py"
PLUGIN_RUNS = """
import sys
from harness.cli import main
out, plugin = sys.argv[1], sys.argv[2]
tiny = ["--plugin", plugin, "--no-progress", "--preset", "tiny", "--set", "measure.runs=2", "--set", "measure.warmup=0"]
steps = [
    ["ls", "models", "--plugin", plugin],
    ["run", "experiments/bench.yaml", *tiny, "--set", "models=[efficient_lvsm, windowed]", "--set", "n_inputs=[1, 2, 3]",
     "--set", "n_targets=[1]", "--set", "ratio={model: windowed, baseline: efficient_lvsm}", "--set", f"output_dir={out}/bench"],
    ["run", "experiments/flops.yaml", "--plugin", plugin, "--no-progress", "--preset", "tiny", "--set", "models=[windowed]",
     "--set", "n_inputs=[1, 2, 4]", "--set", "n_targets=[1]", "--set", f"output_dir={out}/flops"],
    ["run", "experiments/render_one_more_target.yaml", *tiny, "--set", "models=[windowed, efficient_lvsm]",
     "--set", "n_inputs=[1, 2, 4]", "--set", "headline_n=[2]", "--set", "fit_n=[1, 64]", "--set", f"output_dir={out}/one_more_target"],
    ["run", f"{out}/eval.yaml", "--plugin", plugin, "--no-progress"],
    ["site", "--experiments", f"{out}/experiments", "--results", out, "--out", f"{out}/site", "--plugin", plugin],
]
for step in steps:
    print("step:", " ".join(step[:2]), flush=True)
    code = main(step)
    if code:
        sys.exit(f"{step[:2]} exited {code}")
"""


@pytest.mark.slow
def test_a_variant_outside_the_repository_runs_through_every_kind(tmp_path):
    """A variant with its own config field, presets and scene state, registered from a file outside the
    `models` package, runs through `ls models`, a profile sweep, FLOPs, one more target, an evaluation
    and the site, with no edit to the repository."""
    evaluation = {"kind": "evaluate", "name": "eval", "output_dir": str(tmp_path / "eval"), "plugins": [str(WINDOWED)],
                  "models": [{"name": "windowed", "preset": "tiny", "overrides": {"window": 3}}],
                  "data": {"source": "synthetic_object", "options": {"count": 2, "views": 8, "image_size": 32},
                           "n_input": 3, "n_target": 2}, "batch_size": 2, "grid_scenes": 1}
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(evaluation))
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "eval.yaml").write_text(yaml.safe_dump(evaluation))
    before = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    # A fresh process: the plugin's registration must not leak into the other tests.
    result = subprocess.run([sys.executable, "-c", PLUGIN_RUNS, str(tmp_path), str(WINDOWED)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Windowed LVSM" in result.stdout and "window" in result.stdout  # ls models: its label and its own field
    assert "Windowed LVSM" in (tmp_path / "bench" / "bench.md").read_text()
    flops = (tmp_path / "flops" / "flops.md").read_text()
    assert "Windowed LVSM" in flops
    assert "Windowed LVSM" in next((tmp_path / "one_more_target").glob("*.md")).read_text()
    scores = (tmp_path / "eval" / "summary.md").read_text()
    assert "| windowed " in scores and "window 3" in scores  # its own field, from its config's describe()
    assert any("Windowed LVSM" in page.read_text() for page in (tmp_path / "site").rglob("*.html"))
    after = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    assert after == before


def test_nothing_outside_models_names_a_variant_or_its_own_fields():
    """Variants are interchangeable only if the harness never spells one out: it reads what a variant
    declares (card, config, capabilities). Experiment YAMLs and published numbers may name them. Own
    fields that are ordinary words (`depth`) name other things too and are left out of the search."""
    names = set(list_models())
    fields = {f for name in names for f in config_class(name).own_fields() if "_" in f}
    pattern = re.compile(r"\b(" + "|".join(sorted(names | fields)) + r")\b")
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for path in [*sorted((ROOT / "harness").rglob("*.py")), ROOT / "Makefile"]
             for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, "\n".join(found)


def test_a_plugin_that_fails_to_import_is_one_line(tmp_path, capsys):
    plugin = tmp_path / "broken.py"
    plugin.write_text("from models import register\nregister('lvsm_decoder_only')(type('X', (), {}))\n")
    assert main(["ls", "models", "--plugin", str(plugin)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: plugin ") and "registered twice" in err[0]


# ----------------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("argv, message", [
    (["validate", "experiments/nope.yaml"], "experiments/nope.yaml: experiment file not found"),
    (["validate", "experiments/bench.yaml", "--set", "models=[lvsm]"], "bench.yaml: models.0: unknown model 'lvsm'"),
    (["run", "experiments/bench.yaml", "--set", "measure.device=cuda:0"], "no CUDA device"),
    (["run", "experiments/bench.yaml", "--set", "n_inputs=[1,"], "--set n_inputs: value '[1,' is not valid YAML"),
    (["preview", "--size", "0"], "preview --size: expected a positive int, got 0"),
    (["run", "experiments/eval_synthetic.yaml", "--preset", "auto"], "every model of eval (kind evaluate) comes from a checkpoint"),
    (["run", "experiments/bench.yaml", "--preset", "huge"], "--preset: unknown preset 'huge'"),
    (["run", "experiments/flops.yaml", "--set", "output_dir=/proc/forbidden"], "output directory /proc/forbidden"),
])
def test_user_errors_are_one_line_and_exit_2(argv, message, capsys, monkeypatch):
    if "cuda" in " ".join(argv) and torch.cuda.is_available():
        pytest.skip("checks the behaviour without CUDA")
    monkeypatch.chdir(ROOT)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_validate_every_experiment_and_say_what_this_machine_lacks_to_run_it(capsys, monkeypatch, tmp_path):
    """Every shipped experiment is valid (exit 0); those that need data or a checkout not given here say so,
    and say nothing once it is given."""
    monkeypatch.chdir(ROOT)
    for variable in ("RE10K_DIR", "RE10K_INDEX", "OBJECTS_DIR", "OFFICIAL_LVSM", "OFFICIAL_EFFICIENT_LVSM", "OFFICIAL_LACT"):
        monkeypatch.delenv(variable, raising=False)
    needing = {"table_re10k", "table_objects", "parity"}
    assert main(["validate", *[str(p.relative_to(ROOT)) for p in EXPERIMENTS if p.stem not in needing]]) == 0
    assert main(["validate", *[str(p.relative_to(ROOT)) for p in EXPERIMENTS]]) == 0
    out = capsys.readouterr().out
    kinds = re.findall(r": ok \(kind (\S+), name \S+\)", out)
    assert len(kinds) == 2 * len(EXPERIMENTS) - len(needing) and set(kinds) <= set(KINDS)
    assert "table_re10k.yaml: ok (kind evaluate, name table_re10k); cannot run here: data.options.root is not set ('$RE10K_DIR')" in out
    assert out.count("cannot run here") == len(needing)
    monkeypatch.setenv("OBJECTS_DIR", str(tmp_path))
    assert main(["validate", "experiments/table_objects.yaml"]) == 0
    assert "cannot run here" not in capsys.readouterr().out


def test_errors_module_uses_the_standard_library_only():
    source = (ROOT / "harness" / "errors.py").read_text()
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert imports == ["from __future__ import annotations"]


def _module_imports(path: Path, package: str) -> set[str]:
    """Modules of `package` imported at module level (imports inside functions are deferred on purpose)."""
    import ast
    tree = ast.parse(path.read_text())
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    base = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
                target = f"{parent}.{node.module}" if node.module else parent
                names = [target] + ([f"{target}.{a.name}" for a in node.names] if not node.module else [])
            else:
                names = [node.module or ""]
            out.update(n for n in names if n.split(".")[0] == package)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == package)
    return out


def test_no_import_cycles_in_the_harness():
    files = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (ROOT / "harness").rglob("*.py")}
    graph = {m: {i for i in _module_imports(p, "harness") if i in files and i != m} for m, p in files.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(trail + [node, nxt])
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [])
    # The layers: errors at the bottom imports nothing of the harness; data, directly or through what it
    # imports, never reaches the experiment layer.
    assert graph["harness.errors"] == set()
    reached, todo = set(), [m for m in graph if m.startswith("harness.data")]
    while todo:
        for nxt in graph[todo.pop()] - reached:
            reached.add(nxt)
            todo.append(nxt)
    experiment_layer = ("harness.schema", "harness.pipeline", "harness.evaluate", "harness.train", "harness.profile")
    assert not [m for m in reached if m.startswith(experiment_layer)], sorted(reached)


@pytest.mark.parametrize("script", sorted((ROOT / "scripts").glob("*.py")), ids=lambda p: p.name)
def test_every_script_imports(script):
    """A script imports only what exists (its `main` is not run)."""
    code = (f"import importlib.util as u; s = u.spec_from_file_location('script', {str(script)!r}); "
            "s.loader.exec_module(u.module_from_spec(s))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_point_labels_do_not_collide_and_legends_stay_off_the_data():
    from harness.plots import label_points, legend_outside, plt
    fig, ax = plt.subplots(figsize=(5, 4))
    xs, ys = [0.052, 0.053, 0.0525, 0.047, 0.036, 0.0525], [23.115, 23.133, 23.12, 22.93, 22.60, 22.80]
    names = ["shared_weights", "global_input_attention", "co_refinement_a", "lvsm_half_depth", "mmdit_joint", "co_refinement"]
    ax.scatter(xs, ys)
    ax.plot(xs[:2], ys[:2], label="Pareto front")
    legend_outside(ax)
    label_points(ax, xs, ys, names)
    from matplotlib.text import Text
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(text, renderer) for text in ax.texts]  # the labels, without leader lines
    assert len(boxes) == len(names)
    assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]
    assert not ax.get_legend().get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))
    plt.close(fig)


def test_a_label_without_a_leader_line_sits_nearest_its_own_point():
    """Points one above the other, as arms of equal FLOPs: each label is at least twice as close to its own
    point as to any other, or is tied to it by a leader line."""
    from matplotlib.text import Text

    from harness.plots import label_points, plt
    fig, ax = plt.subplots(figsize=(5, 4.6))
    xs = [0.0524, 0.0504, 0.0504, 0.0853, 0.0853, 0.0873, 0.1615, 0.1598, 0.1598, 0.9866, 0.9867]
    ys = [23.62, 24.66, 24.69, 24.85, 24.89, 23.62, 22.84, 23.62, 23.80, 23.59, 23.77]
    ax.scatter(xs, ys)
    ax.margins(x=0.15, y=0.12)
    label_points(ax, xs, ys, [f"arm{i}" for i in range(len(xs))])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    points = [ax.transData.transform(p) for p in zip(xs, ys)]
    for own, note in enumerate(ax.texts):
        if note.arrow_patch is not None:
            continue
        box = Text.get_window_extent(note, renderer)
        gaps = [np.hypot(max(box.x0 - qx, 0, qx - box.x1), max(box.y0 - qy, 0, qy - box.y1)) for qx, qy in points]
        assert all(gap > 2 * gaps[own] for i, gap in enumerate(gaps) if i != own), (note.get_text(), gaps)
    plt.close(fig)


def test_a_row_measured_with_uncommitted_code_is_named_by_the_commit_that_holds_that_code():
    from harness.provenance import clean_commit, committed_code_version
    parents = subprocess.run(["git", "rev-list", "--parents", "-n", "1", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if parents.returncode or len(parents.stdout.split()) != 2:
        # Without history there is no parent; after a merge, a commit of the merged branch may hold the same code first.
        pytest.skip("needs a git checkout whose last commit has one parent")
    head, parent = (subprocess.run(["git", "rev-parse", "--short=10", rev], cwd=ROOT, capture_output=True, text=True)
                    .stdout.strip() for rev in ("HEAD", "HEAD~1"))
    assert clean_commit(head, "anything") == head
    # Measured on the parent with uncommitted changes that HEAD then committed: HEAD holds that code.
    assert clean_commit(f"{parent}-dirty", committed_code_version("HEAD")) == head
    assert clean_commit(f"{parent}-dirty", "src-000000000000") == f"{parent} + uncommitted changes (code src-000000000000)"


def test_the_paper_index_names_the_device_of_the_rows_that_have_one(tmp_path):
    import json

    from harness.paper import status
    from harness.schema import PaperEntry
    spec = load_experiment(ROOT / "experiments" / "convergence.yaml", [f"output_dir={tmp_path}"])
    rows = [{"key": "run", "status": "ok", "version": "v", "device": "cpu: X (1 thread)", "commit": "abc"},
            {"key": "cost", "status": "ok", "version": "v"}]  # a cost row measures on no device of its own
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = status(spec, PaperEntry(title="t", published="p", target="convergence"))
    assert line.startswith("measured here: 2 rows on cpu: X (1 thread)") and "commit abc" in line and "?" not in line
    # Rows merged from two machines name both.
    rows.append({"key": "run2", "status": "ok", "version": "v", "device": "cpu: Y (1 thread)", "commit": "abd"})
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = status(spec, PaperEntry(title="t", published="p", target="convergence"))
    assert line.startswith("measured here: 3 rows on cpu: X (1 thread); cpu: Y (1 thread)"), line


def test_the_paper_index_counts_the_rows_the_tables_show_not_every_point_ever_recorded(tmp_path):
    """A narrower rerun of a sweep keeps the wider run's rows in its records; the index describes what the
    tables now show."""
    from harness.cli import main
    from harness.paper import status
    from harness.schema import PaperEntry
    args = ["run", str(ROOT / "experiments" / "flops.yaml"), "--no-progress", "--preset", "tiny", "--set", f"output_dir={tmp_path}",
            "--set", "models=[efficient_lvsm]", "--set", "n_targets=[1]"]
    assert main([*args, "--set", "n_inputs=[1, 2]"]) == 0
    assert main([*args, "--set", "n_inputs=[2]"]) == 0
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == 2
    spec = load_experiment(ROOT / "experiments" / "flops.yaml", [f"output_dir={tmp_path}"])
    assert status(spec, PaperEntry(title="t", published="p", target="flops")).startswith("measured here: 1 rows on ")


def test_one_registry_for_models_sources_and_kinds():
    """Models, data sources and experiment kinds share one Registry: a taken name is refused with each
    one's error type, an unknown one names those registered, and "module:attr" entries load on first use."""
    from harness.data.registry import SOURCES, register_source
    from harness.data.source import Source
    from harness.errors import DataError
    from models.registry import MODELS, Registry
    for registry, error in ((MODELS, ValueError), (SOURCES, DataError), (KINDS, ConfigError)):
        name = registry.names()[0]
        with pytest.raises(error, match=f"{registry.what} '{name}' is registered twice"):
            registry.add(name, object())
    with pytest.raises(DataError, match="data source 'synthetic_object' is registered twice"):
        register_source("synthetic_object")(type("Impostor", (Source,), {}))
        with pytest.raises(Exception, match=f"unknown {registry.what} 'nope'; registered: {name}"):
            registry.get("nope")
    lazy = Registry("thing")
    lazy.add("path_join", "os.path:join")
    assert lazy.get("path_join") is __import__("os").path.join and "path_join" in lazy and list(lazy) == ["path_join"]
