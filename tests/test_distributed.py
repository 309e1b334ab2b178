"""Every kind under torchrun: two gloo ranks on this CPU, started as a user starts them
(`python -m torch.distributed.run --standalone --nproc_per_node 2 -m harness run FILE`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.cli import main
from harness.records import RecordStore
from harness.schema import RunOptions, load_experiment, run_spec

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow,  # every test starts ranks under torchrun
              pytest.mark.filterwarnings("ignore::harness.metrics.LPIPSUnavailableWarning")]  # expected: no backbone here


@pytest.fixture(autouse=True)
def _quiet(monkeypatch, tmp_path):
    monkeypatch.setenv("LVSM_BENCH_CODE_VERSION", "test")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "harness", "run", *args, "--no-progress"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)


def write_yaml(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def evaluation(tmp_path: Path, out: str, scenes: int) -> Path:
    return write_yaml(tmp_path / f"{out}.yaml", {
        "kind": "evaluate", "name": "eval_world", "output_dir": str(tmp_path / out), "grid_scenes": 1,
        "models": [{"name": "lvsm_decoder_only", "preset": "tiny"}, {"name": "efficient_lvsm", "preset": "tiny"}],
        "data": {"source": "synthetic_scene", "options": {"count": 9, "seed": 0, "image_size": 32},
                 "n_input": 2, "n_target": 2, "max_scenes": scenes}})


def by_key(out: Path) -> dict[str, dict]:
    rows = RecordStore(out / "rows.jsonl").rows()
    counts = Counter(r["key"] for r in rows)
    assert max(counts.values()) == 1, "a point was recorded twice"
    return {r["key"]: r for r in rows}


@pytest.mark.timeout(150)
def test_two_ranks_evaluate_exactly_what_one_process_evaluates_and_another_world_resumes(tmp_path):
    one = run_spec(load_experiment(evaluation(tmp_path, "one", 7)), RunOptions(progress=False))
    # An odd number of scenes on two ranks, read by a loader worker on each.
    done = torchrun(str(evaluation(tmp_path, "two", 7)), "--set", "data.num_workers=1")
    assert done.returncode == 0, done.stderr[-3000:]
    single, shared = by_key(tmp_path / "one"), by_key(tmp_path / "two")
    assert set(shared) == set(single) and len(shared) == 2 * 7  # the same scenes: none twice, none missing
    assert {r["rank"] for r in shared.values()} == {0, 1} and {r["world_size"] for r in shared.values()} == {2}
    for key, row in single.items():
        other = shared[key]
        assert (other["model"], other["scene"], other["status"]) == (row["model"], row["scene"], "ok")
        for metric in ("psnr", "ssim"):
            assert other[metric] == pytest.approx(row[metric], abs=1e-6)
        for a, b in zip(row["per_view"], other["per_view"], strict=True):
            assert (a["view"], b["psnr"], b["ssim"]) == (b["view"], pytest.approx(a["psnr"], abs=1e-6),
                                                         pytest.approx(a["ssim"], abs=1e-6))
    summary = pd.read_csv(tmp_path / "two" / "summary.csv")
    assert list(summary["model"]) == list(one.summary["model"]) and set(summary["scenes"]) == {7}
    for metric in ("psnr", "ssim"):
        assert list(summary[metric]) == pytest.approx(list(one.summary[metric]), abs=1e-6)
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["world"]["size"] == 2 and manifest["world"]["backend"] == "gloo" and len(manifest["world"]["devices"]) == 2
    assert "scenes/s" in (tmp_path / "two" / "summary.md").read_text()
    assert not list((tmp_path / "two").glob("rows.rank*")) and not (tmp_path / "two" / "run.lock").exists()
    assert done.stdout.splitlines().count("# eval_world: image quality (synthetic_scene)") == 1  # one report, by rank 0

    # One process, two more scenes: only those are evaluated; the two ranks' rows are read as they are.
    before = (tmp_path / "two" / "rows.jsonl").read_text()
    more = run_spec(load_experiment(evaluation(tmp_path, "two", 9)), RunOptions(progress=False))
    assert more.computed == 2 * 2 and set(more.summary["scenes"]) == {9}
    assert (tmp_path / "two" / "rows.jsonl").read_text().startswith(before) and len(by_key(tmp_path / "two")) == 2 * 9


def profile(tmp_path: Path, n_inputs: list[int]) -> Path:
    return write_yaml(tmp_path / "profile.yaml", {
        "kind": "profile", "name": "profile_world", "output_dir": str(tmp_path / "out"), "preset": "tiny",
        "models": ["lvsm_decoder_only", "efficient_lvsm"], "n_inputs": n_inputs, "n_targets": [1], "headline_n": 1,
        # One thread in both worlds (torchrun gives each rank one): the points are the same points.
        "measure": {"warmup": 1, "runs": 2, "min_runs": 1, "threads": 1}})


@pytest.mark.timeout(150)
def test_a_two_rank_profile_sweep_measures_each_missing_point_once_and_writes_one_set_of_tables(tmp_path):
    assert main(["run", str(profile(tmp_path, [1])), "--no-progress"]) == 0  # one process; its folder released at the end
    out = tmp_path / "out"
    first = by_key(out)
    assert len(first) == 2 + 1  # two models at N=1 and their alternating pair
    before = (out / "rows.jsonl").read_text()
    done = torchrun(str(profile(tmp_path, [1, 2, 3])), "--set", "allow_cpu_multirank=true")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = by_key(out)  # every point once
    assert len(rows) == 2 * 3 + 1 and (out / "rows.jsonl").read_text().startswith(before)
    new = [r for k, r in rows.items() if k not in first]
    assert sorted((r["model"], r["n_input"]) for r in new) == sorted((m, n) for m in ("lvsm_decoder_only", "efficient_lvsm")
                                                                   for n in (2, 3))
    assert {r["rank"] for r in new} == {0, 1}  # shared out
    assert done.stdout.splitlines().count("# profile_world") == 1 and not list(out.glob("rows.rank*"))  # one report
    table = (out / "profile_world.md").read_text()
    assert "timed under shared cores: 4 of these points" in table and "| LVSM decoder-only |   3 |" in table
    assert "timed under shared cores" in (out / "ratios.md").read_text()
    assert json.loads((out / "manifest.json").read_text())["world"]["size"] == 2


@pytest.mark.timeout(120)
def test_timing_on_a_cpu_under_two_ranks_is_refused_in_one_line_unless_forced(tmp_path):
    done = torchrun(str(profile(tmp_path, [1])))
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and "exitcode  : 2" in done.stderr
    assert len(errors) == 1 and "2 ranks is refused" in errors[0] and "allow_cpu_multirank=true" in errors[0], errors
    assert not (tmp_path / "out").exists()


@pytest.mark.timeout(150)
def test_a_convergence_study_trains_its_arms_one_after_another_with_every_rank(tmp_path):
    out = tmp_path / "out"
    study = write_yaml(tmp_path / "study.yaml", {
        "kind": "convergence", "name": "study_world", "output_dir": str(out), "models": ["lvsm_decoder_only", "efficient_lvsm"],
        "preset": "tiny", "overrides": {"image_size": 16, "patch_size": 8}, "blur_sigmas": [1.0], "cost": {"runs": 1},
        "data": {"source": "synthetic_object", "image_size": 16, "options": {"count": 4, "views": 8, "supersample": 1},
                 "eval_options": {"seed": 1, "count": 2}, "n_target": 2, "eval_n_target": 2, "eval_scenes": 2},
        "train": {"steps": 2, "batch_size": 2, "val_every": 2, "checkpoint_every": 2, "device": "cpu"}})
    done = torchrun(str(study))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = by_key(out)  # the predictors, two trained arms, their costs and the step cost, each recorded once, by rank 0
    assert len(rows) == 1 + 2 + 2 + 1 and {(r["rank"], r["world_size"]) for r in rows.values()} == {(0, 2)}
    assert all(r["status"] == "ok" for r in rows.values())
    for arm in ("lvsm_decoder_only", "efficient_lvsm"):
        starts = [r for r in RecordStore(out / "runs" / arm / "metrics.jsonl").rows() if r["kind"] == "start"]
        assert len(starts) == 1 and starts[0]["world_size"] == 2  # trained by both ranks together
    assert json.loads((out / "manifest.json").read_text())["world"]["size"] == 2
    assert done.stdout.splitlines().count("# study_world: final validation quality per arm (same data, steps, batch)") == 1
