"""Failures tell the truth: exit codes (0 all recorded ok, 1 any point failed, 2 user error, 130 Ctrl-C),
a full disk, damaged training checkpoints, an unreadable row, two experiments in one folder, two
processes in one folder, and Ctrl-C. Each is driven the way a user meets it, on tiny configurations."""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.errors import CheckpointError, OutputError
from harness.pipeline import Sweep
from harness.profile.kinds import FlopCounter
from harness.records import RecordStore, write_atomic
from harness.schema import ModelRef
from harness.train import OptimSpec, TrainData, TrainSpec, train_model

ROOT = Path(__file__).resolve().parent.parent
FLOPS = str(ROOT / "experiments" / "flops.yaml")


def flops_argv(out: Path, *extra: str) -> list[str]:
    """A four-point FLOP count (2 models x N in {1, 2}) at the tiny preset: a few seconds."""
    return ["run", FLOPS, "--preset", "tiny", "--no-progress", "--set", "models=[lvsm_decoder_only, efficient_lvsm]",
            "--set", "n_inputs=[1, 2]", "--set", "n_targets=[1]", "--set", "fit_n=[1, 64]", "--set", f"output_dir={out}", *extra]


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]


def fail_at_call(monkeypatch, calls: set[int], error: BaseException) -> list[int]:
    """Make the FLOP count of the given calls (1-based, in point order) raise `error`."""
    original, seen = FlopCounter.forward, []

    def forward(self, *args, **kwargs):
        seen.append(len(seen) + 1)
        if seen[-1] in calls:
            raise error
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FlopCounter, "forward", forward)
    return seen


def stderr_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# ------------------------------------------------------------------------------- exit codes


@pytest.mark.slow
def test_a_failed_point_exits_1_and_a_rerun_that_records_it_exits_0(tmp_path, monkeypatch, caplog):
    out = tmp_path / "out"
    fail_at_call(monkeypatch, {2}, ValueError("shape mismatch"))
    assert main(flops_argv(out)) == 1
    assert [r["status"] for r in rows_of(out)] == ["ok", "error", "ok", "ok"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("failed: flops: lvsm_decoder_only N=2 M=1: ValueError: shape mismatch" in e for e in errors), errors
    assert any("1 of 4 points failed" in e for e in errors), errors
    monkeypatch.undo()
    assert main(flops_argv(out)) == 0  # the failed point is retried and now succeeds
    assert [r["status"] for r in rows_of(out)][-1] == "ok" and len(rows_of(out)) == 5


@pytest.mark.slow
def test_a_convergence_run_that_cannot_train_exits_1(tmp_path, capsys, caplog):
    """The training point fails (both checkpoints damaged): recorded with its reason, and the command says so."""
    out = tmp_path / "out"
    study = tmp_path / "tiny.yaml"
    study.write_text(textwrap.dedent(f"""
        kind: convergence
        name: tiny_convergence
        output_dir: {out}
        models: [lvsm_decoder_only]
        preset: tiny
        overrides: {{image_size: 16, patch_size: 8}}
        data: {{source: synthetic_object, image_size: 16, options: {{count: 4, views: 8, supersample: 1}},
                eval_options: {{seed: 1, count: 2}}, n_target: 2, eval_n_target: 2, eval_scenes: 2}}
        train: {{steps: 2, batch_size: 2, val_every: 1, checkpoint_every: 2, device: cpu}}
        cost: {{runs: 1}}
        blur_sigmas: [1.0]
    """))
    run_dir = out / "runs" / "lvsm_decoder_only"
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint.pt").write_bytes(b"PK\x03\x04 cut short")
    (run_dir / "checkpoint.previous.pt").write_bytes(b"")
    assert main(["run", str(study), "--no-progress"]) == 1
    row = next(r for r in rows_of(out) if r.get("arm") == "lvsm_decoder_only")
    assert row["status"] == "error" and "no intact training checkpoint" in row["error"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("lvsm_decoder_only seed 0: CheckpointError" in e and "checkpoint.pt: damaged" in e for e in errors), errors


# -------------------------------------------------------------------------------- full disk


def fail_writes_to(monkeypatch, name: str, after_bytes: int = 10):
    """os.write to a file called `name` writes `after_bytes` bytes, then the disk is full."""
    real = os.write

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(name):
            if after_bytes and len(data) > after_bytes:
                return real(fd, bytes(data[:after_bytes]))  # a partial write: the next call finds no space
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


def test_an_append_on_a_full_disk_leaves_the_file_as_it_was_and_says_so(tmp_path, monkeypatch):
    store = RecordStore(tmp_path / "rows.jsonl")
    store.append({"key": "a", "status": "ok"})
    store.append({"key": "b", "status": "ok"})
    before = store.path.read_bytes()
    fail_writes_to(monkeypatch, "rows.jsonl")
    with pytest.raises(OutputError) as caught:
        store.append({"key": "c", "status": "ok", "value": "x" * 100})
    assert str(caught.value) == f"{store.path}: no space left on device; 2 rows kept, rerun to resume"
    assert store.path.read_bytes() == before
    monkeypatch.undo()
    with pytest.raises(OutputError, match="2 rows kept"):  # nothing more lands after a failed append
        store.append({"key": "d", "status": "ok"})
    assert store.path.read_bytes() == before


@pytest.mark.slow
def test_a_full_disk_stops_the_cli_with_one_line_and_a_rerun_resumes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    real, appends = RecordStore.append, []

    def append(self, row):  # the disk fills up at the third row
        appends.append(1)
        if len(appends) == 3:
            fail_writes_to(monkeypatch, "rows.jsonl")
        return real(self, row)

    monkeypatch.setattr(RecordStore, "append", append)
    assert main(flops_argv(out)) == 2
    lines = stderr_lines(capsys)
    assert lines == [f"error: {out / 'rows.jsonl'}: no space left on device; 2 rows kept, rerun to resume"]
    assert (out / "rows.jsonl").read_text().count("\n") == 2 and len(rows_of(out)) == 2
    assert not (out / "run.lock").exists()
    monkeypatch.undo()
    assert main(flops_argv(out)) == 0
    rows = rows_of(out)
    assert len(rows) == 4 and len({r["key"] for r in rows}) == 4


def test_a_report_file_on_a_full_disk_is_one_line_and_the_old_file_is_kept(tmp_path, monkeypatch):
    path = tmp_path / "summary.md"
    write_atomic(path, "old")

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OutputError, match="summary.md: no space left on device"):
        write_atomic(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.md"]


# ----------------------------------------------------------------------- damaged checkpoints


def tiny_training(steps: int = 6):
    model = ModelRef(name="lvsm_decoder_only", preset="tiny", overrides={"image_size": 16, "patch_size": 8})
    data = TrainData(source="synthetic_object", image_size=16, options={"count": 4, "seed": 0, "views": 8, "supersample": 1},
                     eval_options={"seed": 1, "count": 2}, n_input=2, n_target=2, eval_n_target=2, eval_scenes=2)
    train = TrainSpec(steps=steps, batch_size=2, val_every=3, checkpoint_every=2, log_every=1, device="cpu", threads=1)
    return model, data, OptimSpec(lr=3e-3, warmup_steps=1), train


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one_exactly(tmp_path, caplog):
    spec = tiny_training(steps=6)
    straight = train_model(*spec, tmp_path / "straight", progress=False)
    train_model(*spec, tmp_path / "run", stop_after=4, progress=False)
    newest, previous = tmp_path / "run" / "checkpoint.pt", tmp_path / "run" / "checkpoint.previous.pt"
    assert torch.load(previous, weights_only=False)["step"] == 2 and torch.load(newest, weights_only=False)["step"] == 4
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # the disk filled up mid-copy
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        resumed = train_model(*spec, tmp_path / "run", progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(newest) in warnings[0] and "damaged" in warnings[0]
    assert "resuming from checkpoint.previous.pt (step 2)" in warnings[0]
    assert resumed.step == 6
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    # The last two checkpoints stay: step 6 and step 4.
    assert [torch.load(p, weights_only=False)["step"] for p in (newest, previous)] == [6, 4]


def test_no_intact_checkpoint_refuses_in_one_line_naming_both(tmp_path):
    spec = tiny_training(steps=4)
    train_model(*spec, tmp_path, stop_after=4, progress=False)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "checkpoint.previous.pt").write_bytes(b"")
    with pytest.raises(CheckpointError) as caught:
        train_model(*spec, tmp_path, progress=False)
    message = str(caught.value)
    assert "\n" not in message and "no intact training checkpoint" in message
    assert "checkpoint.pt: damaged" in message and "checkpoint.previous.pt: damaged" in message
    assert f"delete {tmp_path} to train from the start" in message


# ---------------------------------------------------------------------------- unreadable line


def test_an_unreadable_line_is_named_by_number_set_aside_once_and_measured_again(tmp_path, caplog):
    points = [{"n": i} for i in range(3)]
    sweep = Sweep(tmp_path, "exp", version="v1")
    sweep.run(points, lambda p: {"value": p["n"]}, progress=False)
    path = tmp_path / "rows.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('"status": "ok"', '"status": ok')  # edited by hand
    path.write_text("".join(lines))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = Sweep(tmp_path, "exp", version="v1")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "line 2 unreadable (not JSON" in warnings[0]
    assert "rows.jsonl.unreadable" in warnings[0] and "2 rows kept" in warnings[0]
    assert (tmp_path / "rows.jsonl.unreadable").read_text() == lines[1]
    assert path.read_text() == lines[0] + lines[2]
    calls = []
    again.run(points, lambda p: calls.append(p["n"]) or {"value": p["n"]}, progress=False)
    assert calls == [1]  # the point whose row was set aside is measured again
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        Sweep(tmp_path, "exp", version="v1").rows(points)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]  # reported once, not on every rerun


def test_a_reader_names_the_line_and_says_what_to_do(tmp_path, caplog):
    store = RecordStore(tmp_path / "rows.jsonl")
    store.path.write_text('{"key": "a"}\n[1, 2]\n{"key": "b"}\n')
    with caplog.at_level(logging.WARNING):
        assert [r["key"] for r in store.rows()] == ["a", "b"]
        store.rows()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "line 2 unreadable (a JSON list, not a row object)" in warnings[0]
    assert "the next run of its experiment moves it to rows.jsonl.unreadable" in warnings[0]


# --------------------------------------------------------------- one experiment per folder


@pytest.mark.slow
def test_another_experiment_in_the_same_folder_is_refused_naming_both(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(flops_argv(out)) == 0
    manifest = (out / "manifest.json").read_bytes()
    capsys.readouterr()
    assert main(flops_argv(out, "--set", "name=other_counts")) == 2
    lines = stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"error: output directory {out} belongs to experiment 'flops'")
    assert "experiment 'other_counts' may not write there" in lines[0]
    assert (out / "manifest.json").read_bytes() == manifest and len(rows_of(out)) == 4
    # Rows without a manifest (a run killed before writing it) name their experiment too.
    (out / "manifest.json").unlink()
    with pytest.raises(OutputError, match="belongs to experiment 'flops' \\(named in .*rows.jsonl\\)"):
        Sweep(out, "other_counts")


# ------------------------------------------------------------------ one process per folder


def write_lock(out: Path, pid: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "experiment": "flops",
                                              "command": "python -m harness run experiments/flops.yaml",
                                              "since": "2026-01-01T00:00:00Z"}))


def test_a_folder_locked_by_a_live_process_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen(["sleep", "60"])
    try:
        write_lock(out, holder.pid)
        assert main(flops_argv(out)) == 2
        lines = stderr_lines(capsys)
        assert len(lines) == 1 and f"is in use by PID {holder.pid} on host {socket.gethostname()}" in lines[0]
        assert not (out / "rows.jsonl").exists()  # nothing was measured
        assert json.loads((out / "run.lock").read_text())["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_a_stale_lock_is_taken_over_with_a_warning_and_released_at_the_end(tmp_path, monkeypatch, caplog):
    out = tmp_path / "out"
    gone = subprocess.Popen(["true"])
    gone.wait()
    write_lock(out, gone.pid)
    held = []
    original = FlopCounter.forward

    def forward(self, *args, **kwargs):  # while the run measures, the lock names it
        held.append(json.loads((out / "run.lock").read_text()))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FlopCounter, "forward", forward)
    with caplog.at_level(logging.WARNING):
        assert main(flops_argv(out)) == 0
    warnings = [r.getMessage() for r in caplog.records if "run.lock" in r.getMessage()]
    assert len(warnings) == 1 and f"taking over the lock of PID {gone.pid}" in warnings[0]
    assert held and all(h["pid"] == os.getpid() and h["host"] == socket.gethostname() for h in held)
    assert not (out / "run.lock").exists()


@pytest.mark.slow
def test_a_second_process_on_a_running_folder_is_refused(tmp_path):
    """Two real processes: the first holds the folder (its measure waits), the second is refused."""
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import sys, time
        from harness.pipeline import Sweep
        sweep = Sweep({str(out)!r}, "exp")
        print("holding", flush=True)
        time.sleep(60)
    """)
    first = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert first.stdout.readline().strip() == "holding"
        with pytest.raises(OutputError, match=f"in use by PID {first.pid} on host"):
            Sweep(out, "exp")
    finally:
        first.kill()
        first.wait()


# --------------------------------------------------------------------------------- Ctrl-C


@pytest.mark.slow
def test_ctrl_c_stops_with_one_line_exit_130_and_a_rerun_resumes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    fail_at_call(monkeypatch, {3}, KeyboardInterrupt())
    try:
        code = main(flops_argv(out))
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped main(): the user sees a traceback")
    assert code == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert stderr_lines_of(err) == ["interrupted: 2 points recorded; rerun the same command to resume"]
    assert len(rows_of(out)) == 2 and not (out / "run.lock").exists()
    monkeypatch.undo()
    seen = fail_at_call(monkeypatch, set(), KeyboardInterrupt())
    assert main(flops_argv(out)) == 0
    assert len(seen) == 2 and len(rows_of(out)) == 4  # only the two points not yet recorded


def stderr_lines_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]
