"""Every kind, run with an output folder of its own in a copy of the repository, leaves that copy as it
was: nothing written beside the output (shipped weights, results, caches). The copy is run as a user
runs it (`python -m harness run`, working directory the checkout), so the code under test is the copy's."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
MEASURE = {"device": "cpu", "warmup": 1, "runs": 2, "min_runs": 1}


def _copy_repository(to: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, to / name)
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "copy"]):
        subprocess.run(["git", *command], cwd=to, check=True, capture_output=True)


def _specs(out: Path) -> dict[str, dict]:
    """One small experiment per kind; the convergence study names the repository's shipped-weights folder."""
    tiny = {"preset": "tiny"}
    scenes = {"source": "synthetic_scene", "options": {"count": 2, "seed": 0, "image_size": 32}, "n_input": 2, "n_target": 2}
    return {
        "profile": {**tiny, "models": ["efficient_lvsm"], "n_inputs": [1], "n_targets": [1], "measure": MEASURE,
                    "fit_n": [1, 64], "headline_n": 1, "headline_m": 1},
        "profile_flops": {**tiny, "models": ["lact"], "n_inputs": [1, 2], "n_targets": [1]},
        "profile_kv_cache": {**tiny, "n_cached": [2], "n_targets": 1, "measure": MEASURE, "fit_n": [1, 64]},
        "profile_efficiency": {**tiny, "models": ["lvsm_decoder_only", "efficient_lvsm"], "measure": MEASURE,
                               "setting_search": {"image_sizes": [256], "max_views": 2}},
        "profile_one_more_target": {**tiny, "models": ["lact"], "flops": {"preset": "tiny"}, "n_inputs": [1, 2],
                                    "timed_n_inputs": [1], "fit_n": [1, 64], "headline_n": [2], "measure": MEASURE},
        "profile_camera_encoding": {**tiny, "models": ["efficient_lvsm"], "encodings": ["gta"], "n_inputs": [1], "measure": MEASURE},
        "op_profile": {**tiny, "models": ["efficient_lvsm"], "overrides": {"image_size": 16}, "n_inputs": [1], "n_targets": [1]},
        "parity": {**tiny, "checkouts": {"OFFICIAL_LVSM": "", "OFFICIAL_EFFICIENT_LVSM": "", "OFFICIAL_LACT": ""}},
        "evaluate": {"models": [{"name": "lvsm_decoder_only", "preset": "tiny"}], "data": scenes, "grid_scenes": 1},
        "convergence": {"models": ["efficient_lvsm"], **tiny, "overrides": {"image_size": 16, "patch_size": 8},
                        "data": {"source": "synthetic_object", "image_size": 16, "options": {"count": 3, "views": 10, "supersample": 1},
                                 "eval_options": {"seed": 1, "count": 2}, "n_input": 2, "n_target": 2, "eval_n_target": 2,
                                 "eval_scenes": 2, "normalize": False},
                        "optim": {"warmup_steps": 1}, "blur_sigmas": [1.0], "cost": {"runs": 1},
                        "train": {"batch_size": 2, "device": "cpu", "steps": 1, "val_every": 1, "checkpoint_every": 1, "threads": 1},
                        "ship_weights": "weights/convergence"},
    }


@pytest.mark.slow
def test_every_kind_writes_only_into_its_output_folder(tmp_path):
    copy, out = tmp_path / "repo", tmp_path / "out"
    _copy_repository(copy)
    specs = _specs(out)
    from harness.schema import KINDS
    assert set(specs) | {"train", "view_generalization"} >= set(KINDS), "a kind without a case here"
    env = {**os.environ, "PYTHONPATH": str(copy), "LVSM_BENCH_CODE_VERSION": "test", "TORCH_HOME": str(tmp_path / "torch")}
    for kind, body in specs.items():
        path = tmp_path / f"{kind}.yaml"
        path.write_text(yaml.safe_dump({"kind": kind, "name": kind, "output_dir": str(out / kind), **body}))
        done = subprocess.run([sys.executable, "-m", "harness", "--quiet", "run", str(path), "--no-progress"], cwd=copy, env=env,
                              capture_output=True, text=True, timeout=600)
        if kind == "parity":  # no official checkout here: refused in one line before any work, nothing written
            assert done.returncode == 2 and "no official checkout given" in done.stderr and not (out / kind).exists(), done.stderr
            continue
        assert done.returncode == 0, (kind, done.stderr[-2000:])
        assert (out / kind / "manifest.json").is_file(), kind
    # The study's shipped weights are what the view-generalization kind reads: run it on them, briefly.
    path = tmp_path / "view_generalization.yaml"
    path.write_text(yaml.safe_dump({"kind": "view_generalization", "name": "vg", "output_dir": str(out / "vg"),
                                    "trained": str(copy / "experiments" / "convergence.yaml"), "models": ["efficient_lvsm"],
                                    "n_inputs": [2]}))
    done = subprocess.run([sys.executable, "-m", "harness", "--quiet", "run", str(path), "--no-progress"], cwd=copy, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=copy, capture_output=True,
                            text=True, check=True).stdout
    assert status == "", status
