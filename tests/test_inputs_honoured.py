"""Every input is honoured or refused: a run option the kind does not read, a file that is not what it
claims to be, missing data (exit status 2, one line, nothing done), and each object-render layout that
`make table-objects` documents runs on a small scene."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from formats import random_capture, write_lvsm, write_opencv_cameras, write_transforms
from harness.cli import main
from harness.schema import RunOptions, load_experiment, run_spec

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def _error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if line]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    return lines[0]


def test_a_run_option_the_kind_does_not_read_is_refused(tmp_path, capsys):
    weights = EXPERIMENTS.parent / "weights" / "convergence" / "lact.pt"
    code = main(["run", str(EXPERIMENTS / "view_generalization.yaml"), "--checkpoint", f"lact={weights}",
                 "--set", f"output_dir={tmp_path / 'vg'}"])
    assert code == 2 and not (tmp_path / "vg").exists()
    line = _error_line(capsys)
    assert "--checkpoint is not read by kind 'view_generalization'" in line
    assert main(["run", str(EXPERIMENTS / "flops.yaml"), "--ship-weights", "--set", f"output_dir={tmp_path / 'f'}"]) == 2
    assert "--ship-weights is not read by kind 'profile_flops'" in _error_line(capsys)


@pytest.mark.parametrize("content", [b"\xff\xfek\x00i\x00n\x00d\x00:\x00", torch.zeros(3)], ids=["utf16", "torch_file"])
def test_an_experiment_file_that_is_not_utf8_yaml_is_one_line(tmp_path, capsys, content):
    path = tmp_path / "exp.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    assert main(["run", str(path)]) == 2
    line = _error_line(capsys)
    assert str(path) in line and "not a UTF-8 text file" in line


@pytest.mark.parametrize("folder, missing", [(None, "root is not set ('$RE10K_DIR')"),
                                             ("no_such_folder", "no_such_folder does not exist")], ids=["unset", "absent"])
def test_missing_data_is_exit_2_with_what_is_missing_and_how_to_provide_it(tmp_path, monkeypatch, capsys, folder, missing):
    if folder is None:
        monkeypatch.delenv("RE10K_DIR", raising=False)
    else:
        monkeypatch.setenv("RE10K_DIR", str(tmp_path / folder))
    out = tmp_path / "out"
    assert main(["run", str(EXPERIMENTS / "table_re10k.yaml"), "--set", f"output_dir={out}"]) == 2
    line = _error_line(capsys)
    assert missing in line and "make table-re10k RE10K_DIR=" in line
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("layout, write", [("lvsm_json", write_lvsm), ("transforms_json", write_transforms),
                                           ("opencv_cameras", write_opencv_cameras)])
def test_table_objects_runs_on_every_documented_layout(tmp_path, monkeypatch, layout, write):
    """`make table-objects OBJECTS_DIR=... OBJECTS_FORMAT=<layout>` as the Makefile runs it, tiny."""
    root = tmp_path / "renders"
    capture = random_capture(views=6, size=16, scene="scene0")
    write(root if layout == "lvsm_json" else root / "scene0", capture)
    monkeypatch.setenv("OBJECTS_DIR", str(root))
    experiment = load_experiment(EXPERIMENTS / "table_objects.yaml", [
        f"output_dir={tmp_path / 'out'}", f"data.source={layout}", "data.options.image_size=16", "data.n_input=2",
        "data.n_target=2", "grid_scenes=0", "models=[{name: lact, preset: tiny}]"])
    result = run_spec(experiment, RunOptions(progress=False))
    assert result.summary.loc[0, "scenes"] == 1 and result.summary.loc[0, "psnr"] > 0


def test_a_parity_run_with_no_official_checkout_is_exit_2(tmp_path, monkeypatch, capsys):
    for variable in ("OFFICIAL_LVSM", "OFFICIAL_EFFICIENT_LVSM", "OFFICIAL_LACT"):
        monkeypatch.delenv(variable, raising=False)
    assert main(["run", str(EXPERIMENTS / "parity.yaml"), "--set", f"output_dir={tmp_path / 'p'}"]) == 2
    line = _error_line(capsys)
    assert "OFFICIAL_LVSM=DIR" in line and "OFFICIAL_LACT=DIR (a checkout of a1600012888/LaCT)" in line
    assert not (tmp_path / "p").exists()


def test_a_data_option_the_source_does_not_take_is_refused_by_validate(capsys):
    assert main(["validate", str(EXPERIMENTS / "table_objects.yaml"), "--set", "data.source=opencv_cameras",
                 "--set", "data.options.patch_size=8"]) == 2
    line = _error_line(capsys)
    assert "options.patch_size: data source 'opencv_cameras' takes no such option" in line
