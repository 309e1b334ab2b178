"""Training loop: exact resume, DDP over two gloo ranks, optimizer groups and schedule, the
camera-ignoring predictors, and the convergence study end to end on a tiny configuration."""
from __future__ import annotations

import hashlib
import json
import socket
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
import yaml

from harness.cli import main
from harness.errors import ConfigError
from harness.report import read_report
from harness.schema import ModelRef, load_experiment, run_experiment
from harness.train import OptimSpec, TrainData, TrainSpec, World, lr_factor, parameter_groups, read_log, train_model
from harness.train.data import open_sources, training_batches
from harness.train.validation import gaussian_blur, nearest_context
from models import build_model


def tiny_run(steps: int = 6, **overrides):
    model = ModelRef(name="lvsm_decoder_only", preset="tiny", overrides={"image_size": 16, "patch_size": 8, **overrides})
    data = TrainData(source="synthetic_object", image_size=16, options={"count": 4, "seed": 0, "views": 8, "supersample": 1},
                    eval_options={"seed": 1, "count": 2}, n_input=2, n_target=2, eval_n_target=2, eval_scenes=2, normalize=True)
    optim = OptimSpec(lr=3e-3, warmup_steps=2)
    train = TrainSpec(steps=steps, batch_size=2, val_every=3, checkpoint_every=3, log_every=1, device="cpu", threads=1)
    return model, data, optim, train


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path):
    spec = tiny_run(steps=6)
    straight = train_model(*spec, tmp_path / "straight", progress=False)
    first = train_model(*spec, tmp_path / "resumed", stop_after=3, progress=False)
    assert first.step == 3
    torch.manual_seed(1234)  # a new process would start from other RNG states; the checkpoint restores them
    resumed = train_model(*spec, tmp_path / "resumed", progress=False)
    assert resumed.step == 6
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    changed = build_model("lvsm_decoder_only", "tiny", image_size=16, patch_size=8)
    assert not all(torch.equal(a, b) for a, b in zip(changed.state_dict().values(), resumed.model.state_dict().values()))
    losses = lambda d: [r["loss"] for r in read_log(d) if r["kind"] == "train"]  # noqa: E731
    assert losses(tmp_path / "straight") == losses(tmp_path / "resumed")
    assert resumed.train_seconds > first.train_seconds


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    model, data, optim, train = tiny_run(steps=3)
    train_model(model, data, optim, train, tmp_path, stop_after=3, progress=False)
    optim = optim.model_copy(update={"lr": 1e-4})
    with pytest.raises(ConfigError, match="optim.lr=0.003"):
        train_model(model, data, optim, train, tmp_path, progress=False)

    # An option the checkpoint predates resumes at its default and is refused at another value.
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    del state["extra"]["settings"]["optim"]["lr"]
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(ConfigError, match="optim.lr="):
        train_model(model, data, optim, train, tmp_path, progress=False)
    default_lr = type(optim).model_fields["lr"].get_default()
    resumed = train_model(model, data, optim.model_copy(update={"lr": default_lr}), train, tmp_path, progress=False)
    assert resumed.step == 3


def test_ranks_take_disjoint_shards_of_one_stream():
    _, data, _, _ = tiny_run()
    source = open_sources(data)[0]
    single = next(training_batches(source, data, World(), batch_size=4))
    shards = [next(training_batches(source, data, World(rank, 2), batch_size=2)) for rank in range(2)]
    interleaved = [single["target_images"][i] for i in range(4)]
    assert torch.equal(shards[0]["target_images"][0], interleaved[0])
    assert torch.equal(shards[1]["target_images"][0], interleaved[1])
    assert torch.equal(shards[0]["target_images"][1], interleaved[2])
    assert not torch.equal(shards[0]["target_images"], shards[1]["target_images"])


def test_nearby_views_draw_context_and_targets_near_an_anchor():
    import numpy as np
    from harness.data import open_source
    from harness.train.data import camera_centres, evaluation_index, example_stream, nearby_views
    source = open_source("synthetic_object", count=2, image_size=16, views=40)
    centres = camera_centres(source, 0).double()
    for seed in range(5):
        context, target = nearby_views(source, 0, 2, 3, 6, np.random.default_rng(seed))
        assert len(set(context + target)) == 5
        # Every view lies among the 6 cameras nearest one of the context views (the anchor).
        near = [set(torch.argsort((centres - centres[c]).norm(dim=-1), stable=True)[:6].tolist()) for c in context]
        assert any(set(context + target) <= pool for pool in near)
    spec = TrainData(nearby_views=6, n_input=2, eval_n_target=3)
    assert evaluation_index(source, spec) == evaluation_index(source, spec)
    spec = TrainData(nearby_views=6, n_input=2, n_target=2, context_target_rate=1.0)
    example = next(example_stream(source, spec))
    assert set(example.target_indices) <= set(example.input_indices)  # the copy curriculum at rate 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    import os
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from harness.distributed import close_world, init_world
    world = init_world("cpu")
    model, data, optim, train = tiny_run(steps=3, camera_encoding="prope")
    result = train_model(model, data, optim, train, out_dir, world=world, progress=False)
    torch.save(result.model.state_dict(), f"{out_dir}/rank{rank}.pt")
    close_world()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_gloo_ranks_train_what_one_process_trains_at_the_same_global_batch(tmp_path):
    mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    states = [torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # Under PRoPE, whose cameras enter every attention: each rank builds its shard's transforms.
    model, data, optim, train = tiny_run(steps=3, camera_encoding="prope")
    # Two ranks of batch 2 take interleaved shards of one stream: one process of batch 4 sees the same examples,
    # and DDP's averaged gradient is its gradient.
    single = train_model(model, data, optim, train.model_copy(update={"batch_size": 4}), tmp_path / "single",
                         progress=False).model.state_dict()
    initial = build_model("lvsm_decoder_only", "tiny", image_size=16, patch_size=8, camera_encoding="prope").state_dict()
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name
        torch.testing.assert_close(states[0][name], single[name], rtol=1e-4, atol=1e-5, msg=name)
    assert not all(torch.equal(states[0][k], initial[k]) for k in initial)
    starts = [r for r in read_log(tmp_path / "ddp") if r["kind"] == "start"]
    assert len(starts) == 1 and starts[0]["world_size"] == 2  # only rank 0 writes
    assert (tmp_path / "ddp" / "checkpoint.pt").is_file()


def test_an_extra_loss_adds_its_weighted_term_to_the_step_and_trains_its_modules():
    """Extra losses (REPA is one) hook into the step: the capture is entered around the forward pass,
    the weighted term joins the loss and its parts, and the modules it declares are stepped too."""
    import contextlib

    from conftest import random_views
    from harness.train.loop import TrainStep
    from harness.train.loss import ReconstructionLoss
    from harness.train.optim import build_optimizer, build_scheduler

    class Offset:
        key, title, label, weight = "offset_loss", "offset", "offset", 0.5

        def __init__(self):
            self.scale, self.forwards = torch.nn.Linear(1, 1), 0
            self.modules = {"offset": self.scale}

        @contextlib.contextmanager
        def capture(self):
            self.forwards += 1
            yield

        def loss(self, model, batch, outputs):
            return (self.scale(outputs.mean().reshape(1, 1)) ** 2).sum()

        def close(self):
            pass

    model, extra = build_model("lvsm_decoder_only", "tiny", image_size=16, patch_size=8).train(), Offset()
    params = torch.nn.ModuleList([model, extra.scale])
    optimizer = build_optimizer(params, OptimSpec(lr=1e-2, warmup_steps=0), torch.device("cpu"))
    step = TrainStep(model, params, ReconstructionLoss(0.0, torch.device("cpu")), optimizer,
                     build_scheduler(optimizer, OptimSpec(), 10), 1.0, torch.device("cpu"), "float32", [extra])
    images, ic, ik, tc, tk = random_views(2, 2, 2, size=16)
    before = extra.scale.weight.detach().clone()
    out = step({"input_images": images, "input_c2w": ic, "input_fxfycxcy": ik, "target_c2w": tc, "target_fxfycxcy": tk,
                "target_images": torch.rand(2, 2, 3, 16, 16)})
    assert extra.forwards == 1 and out.parts["offset_loss"] > 0
    assert out.loss.item() == pytest.approx(out.parts["mse"] + 0.5 * out.parts["offset_loss"], rel=1e-6)
    assert not torch.equal(extra.scale.weight, before)


def test_no_weight_decay_on_one_dimensional_parameters():
    model = build_model("efficient_lvsm", "tiny")
    decay, no_decay = parameter_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert decay["params"] and all(p.dim() >= 2 for p in decay["params"])
    assert no_decay["params"] and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_warmup_then_cosine_or_constant():
    spec = OptimSpec(lr=1e-3, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert lr_factor(0, spec, 100) == pytest.approx(0.1)
    assert lr_factor(9, spec, 100) == pytest.approx(1.0)
    assert lr_factor(10, spec, 100) == pytest.approx(1.0)
    assert lr_factor(55, spec, 100) == pytest.approx(0.55)
    assert lr_factor(100, spec, 100) == pytest.approx(0.1)
    assert lr_factor(80, spec.model_copy(update={"schedule": "constant"}), 100) == 1.0


def test_camera_ignoring_predictors():
    images = torch.rand(1, 2, 3, 16, 16)
    c2w = torch.eye(4).repeat(1, 2, 1, 1)
    c2w[0, 1, :3, 3] = torch.tensor([1.0, 0.0, 0.0])
    target_c2w = c2w[:, [1, 0, 1]].clone()
    target_c2w[0, 0, :3, 3] += 0.1
    batch = {"input_images": images, "input_c2w": c2w, "target_c2w": target_c2w}
    picked = nearest_context(batch)
    assert torch.equal(picked[0, 0], images[0, 1]) and torch.equal(picked[0, 1], images[0, 0])
    flat = torch.full((2, 3, 16, 16), 0.3)
    assert torch.allclose(gaussian_blur(flat, 2.0), flat)
    blurred = gaussian_blur(images[0], 1.5)
    assert blurred.shape == images[0].shape and blurred.std() < images[0].std()


def _write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


def tiny_convergence(path: Path, out: Path, variants: list[str], data: dict, train: dict, **keys) -> Path:
    """A convergence experiment of tiny models on 16 px synthetic objects that trains in seconds."""
    spec = {"kind": "convergence", "output_dir": str(out), "models": variants, "preset": "tiny",
            "overrides": {"image_size": 16, "patch_size": 8},
            "data": {"source": "synthetic_object", "image_size": 16, **data}, "optim": {"warmup_steps": 1},
            "train": {"batch_size": 2, "device": "cpu", **train}, **keys}
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("body, words", [
    ("bogus: 1\n", ["bogus: unknown key"]),
    ("models: [lvsm_decoder_only, no_such_model]\n", ["models.1", "'no_such_model'", "efficient_lvsm"]),
    ("train: {steps: many}\n", ["train.steps", "valid integer", "'many'"]),
    ("train: {stepz: 3}\n", ["train.stepz: unknown key"]),
    ("optim: {schedule: linear}\n", ["optim.schedule", "'cosine'", "'constant'"]),
    ("overrides: {depthh: 3}\n", ["arm lvsm_decoder_only", "depthh", "its fields", "depth"]),
    ("data: {context_target_rate: 1.5}\n", ["data.context_target_rate", "less than or equal to 1"]),
    ("data: {options: {count: 4}, max_scenes: 2}\n", ["data.max_scenes: unknown key"]),
])
def test_bad_experiment_yaml_names_the_key_and_the_allowed_values(tmp_path, body, words):
    path = _write(tmp_path / "bad.yaml", "kind: convergence\n" + body)
    with pytest.raises(ConfigError) as caught:
        load_experiment(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message


@pytest.mark.slow
def test_convergence_study_end_to_end(tmp_path, capsys):
    path = tiny_convergence(
        tmp_path / "tiny.yaml", tmp_path / "out", ["lvsm_encoder_decoder", "efficient_lvsm"],
        data={"options": {"count": 4, "views": 8, "supersample": 1}, "eval_options": {"seed": 1, "count": 2},
              "n_target": 2, "eval_n_target": 2, "eval_scenes": 2},
        train={"steps": 2, "val_every": 1, "checkpoint_every": 2, "log_every": 1, "threads": 1}, reach_psnr=[5.0], blur_sigmas=[1.0, 2.0],
        step_cost_rounds=3, speedup_claim={"arm": "efficient_lvsm", "over": "lvsm_encoder_decoder", "factor": 2.0, "source": "test"})
    summary = run_experiment(path, progress=False)
    out = tmp_path / "out"
    table = pd.read_csv(out / "final.csv")
    for column in ["arm", "variant", "seed", "steps", "seconds", "final_psnr", "final_ssim", "best_trivial_psnr",
                   "pose_swap_drop_db", "steps_to_trivial", "steps_to_5dB", "step_ms", "wall_seconds", "seconds_to_5dB",
                   "wall_seconds_to_5dB", "contended_intervals"]:
        assert column in table.columns
    # Seconds are steps x the clean cost of a step, timed in alternation after training; wall-clock beside them.
    assert table["step_ms"].gt(0).all() and (table["seconds"] == (2 * table["step_ms"] / 1e3).round(1)).all()
    notes = (out / "final.md").read_text()
    assert "clean cost per training step" in notes and "3 rounds" in notes
    # The machine is named as the steps were timed (the study's one thread), not as the process runs.
    clean_cost = next(line for line in notes.splitlines() if "clean cost per training step" in line)
    assert "(1 thread)" in clean_cost and "threads)" not in clean_cost
    # Each run names the machine it trained on, the one its wall-clock seconds come from.
    assert table["device"].str.startswith("cpu: ").all()
    costs = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines() if '"cost"' in line]
    assert costs and all(r["threads"] == 1 and r["device"].endswith("(1 thread)") for r in costs if r.get("cost"))
    headlines = (out / "headlines.md").read_text()
    read = "speed-up of efficient_lvsm over lvsm_encoder_decoder to 5dB" in headlines or "at step 0" in headlines
    assert read and "published 2x" in headlines
    log = [r for r in read_log(out / "runs" / "efficient_lvsm") if r.get("kind") == "train"]
    assert log and all(r["interval_wall_s"] > 0 and r["interval_cpu_s"] >= 0 and isinstance(r["contended"], bool) for r in log)
    assert list(table["variant"]) == ["lvsm_encoder_decoder", "efficient_lvsm"] and (table["steps"] == 2).all()
    arms = pd.read_csv(out / "summary.csv")
    assert list(arms["arm"]) == ["lvsm_encoder_decoder", "efficient_lvsm"] and (arms["seeds"] == 1).all()
    assert (arms["psnr_mean"] == table["final_psnr"]).all() and arms["gflops"].gt(0).all() and arms["latency_ms"].gt(0).all()
    for name in ("psnr_vs_step.png", "psnr_vs_seconds.png", "psnr_per_arm.png", "quality_vs_cost.png", "final.md",
                 "trivial_predictors.md", "manifest.json", "rows.jsonl"):
        assert (out / name).is_file(), name
    printed = capsys.readouterr().out
    for predictor in ("context_mean", "nearest_context", "blurred_mean"):
        assert predictor in printed
    # A rerun finds every variant recorded and trains nothing.
    mtime = (out / "runs" / "efficient_lvsm" / "checkpoint.pt").stat().st_mtime_ns
    again = run_experiment(path, progress=False)
    assert (out / "runs" / "efficient_lvsm" / "checkpoint.pt").stat().st_mtime_ns == mtime
    pd.testing.assert_frame_equal(summary.reset_index(drop=True), again.reset_index(drop=True))


def test_ring_layout_spreads_context_views_in_azimuth():
    import math

    import numpy as np
    from harness.data import open_source
    from harness.train.data import camera_centres, evaluation_index, example_stream, ring_views
    source = open_source("synthetic_object", count=2, image_size=16, views=40)
    centres = camera_centres(source, 0).double()
    azimuth = torch.atan2(centres[:, 0], centres[:, 2])
    for seed in range(5):
        context, target = ring_views(source, 0, 4, 3, np.random.default_rng(seed))
        assert len(set(context + target)) == 7
        angles = sorted(azimuth[context].tolist())
        gaps = [b - a for a, b in zip(angles, angles[1:])] + [angles[0] + 2 * math.pi - angles[-1]]
        assert max(gaps) < math.radians(150)  # a random draw of 4 leaves a wider gap most of the time
    spec = TrainData(context_layout="ring", n_input=3, n_target=2, eval_n_target=3)
    index = evaluation_index(source, spec)
    assert index == evaluation_index(source, spec) and all(len(v["context"]) == 3 for v in index.values())
    example = next(example_stream(source, spec))
    assert len(example.input_indices) == 3 and not set(example.target_indices) & set(example.input_indices)
    from harness.train.config import ConvergenceExperiment
    with pytest.raises(ValueError, match="context_layout"):
        ConvergenceExperiment(name="c", kind="convergence", data=TrainData(context_layout="ring", nearby_views=6))


@pytest.mark.slow
def test_shipped_weights_reproduce_the_study_in_view_generalization_and_evaluation(tmp_path, capsys):
    """The study ships its weights (weights only, sha256 in a manifest); view generalization and the
    evaluation kind read them and reproduce its final validation PSNR; the KV-cache numbers are the full
    forward's; a file that does not match its checksum is refused in one line."""
    weights = tmp_path / "weights"
    tiny_convergence(
        tmp_path / "conv.yaml", tmp_path / "conv", ["lvsm_decoder_only", "efficient_lvsm"],
        data={"options": {"count": 4, "views": 12, "supersample": 1}, "eval_options": {"seed": 1, "count": 3}, "n_input": 3,
              "n_target": 2, "eval_n_target": 2, "eval_scenes": 3, "context_layout": "ring", "normalize": False},
        train={"steps": 3, "val_every": 3, "checkpoint_every": 3, "threads": 1}, blur_sigmas=[1.0], cost={"runs": 1},
        ship_weights=str(weights))
    trained = run_experiment(tmp_path / "conv.yaml", progress=False, ship_weights=True).set_index("arm")
    manifest = json.loads((weights / "manifest.json").read_text())["models"]
    assert sorted(manifest) == ["efficient_lvsm.pt", "lvsm_decoder_only.pt"]
    for file, entry in manifest.items():
        state = torch.load(weights / file, weights_only=True)  # weights only: a plain state dict
        assert all(isinstance(v, torch.Tensor) for v in state.values()) and entry["step"] == 3
        assert hashlib.sha256((weights / file).read_bytes()).hexdigest() == entry["sha256"]
    mtime = (weights / "efficient_lvsm.pt").stat().st_mtime_ns
    run_experiment(tmp_path / "conv.yaml", progress=False, ship_weights=True)  # nothing retrained: the shipped files stay
    assert (weights / "efficient_lvsm.pt").stat().st_mtime_ns == mtime
    path = _write(tmp_path / "vg.yaml", f"""
        kind: view_generalization
        output_dir: {tmp_path / "vg"}
        trained: conv.yaml
        models: [lvsm_decoder_only, efficient_lvsm]
        n_inputs: [1, 3, 5]
    """)
    rows = {(r["arm"], r["n_input"], r["mode"]): r for r in run_experiment(path, progress=False)}
    assert len(rows) == 9 and all(r["status"] == "ok" for r in rows.values())
    for n in (1, 3, 5):
        full, cached = rows["efficient_lvsm", n, "full"], rows["efficient_lvsm", n, "kv_cache"]
        assert cached["psnr"] == pytest.approx(full["psnr"], abs=1e-4) and cached["kv_vs_full_max_abs"] < 1e-4
    for variant in ("lvsm_decoder_only", "efficient_lvsm"):
        assert rows[variant, 3, "full"]["psnr"] == pytest.approx(trained.loc[variant, "psnr_mean"], abs=1e-4)
    assert all(r["weights_sha256"] == manifest[f"{r['arm']}.pt"]["sha256"] for r in rows.values())
    table = (tmp_path / "vg" / "psnr_by_n.md").read_text()
    assert "3 (training N)" in table and "KV cache" in table
    assert (tmp_path / "vg" / "psnr_vs_n.png").is_file()
    evaluation = _write(tmp_path / "eval.yaml", f"""
        kind: evaluate
        output_dir: {tmp_path / "eval"}
        models: [{{name: efficient_lvsm, checkpoint: {weights / "efficient_lvsm.pt"}}}]
        data: {{source: synthetic_object, options: {{count: 3, seed: 1, views: 12, supersample: 1, image_size: 16}},
                index: {tmp_path / "conv" / "validation_index.json"}, normalize: false}}
        grid_scenes: 0
    """)
    result = run_experiment(evaluation, progress=False)
    assert result.summary.loc[0, "psnr"] == pytest.approx(trained.loc["efficient_lvsm", "psnr_mean"], abs=1e-4)
    damaged = bytearray((weights / "efficient_lvsm.pt").read_bytes())
    damaged[-100] ^= 0xFF
    (weights / "efficient_lvsm.pt").write_bytes(bytes(damaged))
    capsys.readouterr()
    assert main(["run", str(evaluation), "--no-progress", "--set", f"output_dir={tmp_path / 'eval2'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "efficient_lvsm.pt: sha256" in err[0] and "does not match" in err[0], err


@pytest.mark.slow
def test_view_generalization_of_a_study_of_arms_and_seeds_with_the_world_moved(tmp_path):
    """Arms of a several-seed study are evaluated per seed, the tables giving the mean; under a rigid move of
    every camera the GTA arm renders the same pixels and the raymap arm does not; an (arm, seed) not trained
    yet is listed as not run, and the report is rebuilt from the records alone."""
    tiny_convergence(
        tmp_path / "conv.yaml", tmp_path / "conv",
        ["efficient_lvsm", {"name": "efficient_lvsm_gta", "model": "efficient_lvsm", "overrides": {"camera_encoding": "gta"}}],
        data={"options": {"count": 3, "views": 10, "supersample": 1}, "eval_options": {"seed": 1, "count": 2}, "n_input": 2,
              "n_target": 2, "eval_n_target": 2, "eval_scenes": 2, "context_layout": "ring", "normalize": False},
        train={"steps": 2, "val_every": 2, "checkpoint_every": 2, "threads": 1}, blur_sigmas=[1.0], cost={"runs": 1}, seeds=[0, 1])
    run_experiment(tmp_path / "conv.yaml", progress=False)
    (tmp_path / "conv" / "runs" / "efficient_lvsm_gta" / "seed1" / "checkpoint.pt").unlink()
    path = _write(tmp_path / "vg.yaml", f"""
        kind: view_generalization
        output_dir: {tmp_path / "vg"}
        trained: conv.yaml
        models: [efficient_lvsm, efficient_lvsm_gta]
        n_inputs: [1, 2]
        kv_cache: []
        rigid: [efficient_lvsm, efficient_lvsm_gta]
    """)
    rows = {(r["arm"], r["seed"], r["n_input"], r["mode"]): r for r in run_experiment(path, progress=False)}
    assert len(rows) == 9 and all(r["status"] == "ok" for r in rows.values())
    assert rows["efficient_lvsm_gta", 0, 2, "rigid"]["moved_vs_full_max_abs"] <= 1e-4
    assert rows["efficient_lvsm", 1, 2, "rigid"]["moved_vs_full_max_abs"] > 1e-3
    report = json.loads((tmp_path / "vg" / "report.json").read_text())
    assert report["not_run"] == [f"Efficient-LVSM (camera_encoding: gta) seed 1: no weights at "
                                 f"{tmp_path / 'conv' / 'runs' / 'efficient_lvsm_gta' / 'seed1' / 'checkpoint.pt'} yet "
                                 f"(train them: python -m harness run {tmp_path / 'conv.yaml'})"]
    summary = pd.read_csv(tmp_path / "vg" / "summary.csv")
    plain = summary[(summary["arm"] == "Efficient-LVSM") & (summary["n_input"] == 1)].iloc[0]
    assert plain["seeds"] == 2 and plain["psnr"] == pytest.approx((rows["efficient_lvsm", 0, 1, "full"]["psnr"]
                                                                   + rows["efficient_lvsm", 1, 1, "full"]["psnr"]) / 2)
    rigid = (tmp_path / "vg" / "rigid.md").read_text()
    assert "| Efficient-LVSM (camera_encoding: gta) |" in rigid and "yes" in rigid and "no " in rigid
    for checkpoint in (tmp_path / "conv" / "runs").rglob("checkpoint.pt"):
        checkpoint.unlink()  # a clone without checkpoints rebuilds the report from its records
    (tmp_path / "vg" / "rigid.md").unlink()
    run_experiment(path, progress=False, from_records=True)
    assert (tmp_path / "vg" / "rigid.md").read_text().splitlines()[-2:] == rigid.splitlines()[-2:]


@pytest.mark.slow
def test_weights_ship_only_on_request_from_the_study_itself_and_never_over_another_model(tmp_path, capsys):
    """A run with overrides (or without --ship-weights) leaves the shipped folder untouched and says where
    its weights are; --ship-weights with an override is refused before any training; shipping over a file
    of another model config is refused unless forced, and the replaced checksum stays in the history."""
    weights = tmp_path / "weights"
    conv = tiny_convergence(
        tmp_path / "conv.yaml", tmp_path / "conv", ["efficient_lvsm"],
        data={"options": {"count": 3, "views": 10, "supersample": 1}, "eval_options": {"seed": 1, "count": 2}, "n_input": 2,
              "n_target": 2, "eval_n_target": 2, "eval_scenes": 2, "normalize": False},
        train={"steps": 2, "val_every": 2, "checkpoint_every": 2, "threads": 1}, blur_sigmas=[1.0], cost={"runs": 1},
        ship_weights=str(weights))
    elsewhere = tmp_path / "elsewhere"
    assert main(["run", str(conv), "--no-progress", "--set", "train.steps=1", "--set", f"output_dir={elsewhere}"]) == 0
    assert not weights.exists() and (elsewhere / "runs" / "efficient_lvsm" / "checkpoint.pt").is_file()
    capsys.readouterr()
    assert main(["run", str(conv), "--no-progress", "--ship-weights", "--set", "train.steps=1",
                 "--set", f"output_dir={tmp_path / 'refused'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not the study" in err[0] and "changed: train" in err[0], err
    assert not (tmp_path / "refused" / "runs").exists() and not weights.exists()
    assert main(["run", str(conv), "--no-progress", "--ship-weights"]) == 0
    first = json.loads((weights / "manifest.json").read_text())["models"]["efficient_lvsm.pt"]
    assert json.loads((tmp_path / "conv" / "manifest.json").read_text())["written_outside_output"] == [str(weights / "efficient_lvsm.pt")]
    spec = yaml.safe_load(conv.read_text())
    spec["overrides"]["mlp_ratio"] = 2
    conv.write_text(yaml.safe_dump(spec))
    capsys.readouterr()
    assert main(["run", str(conv), "--no-progress", "--ship-weights", "--set", f"output_dir={tmp_path / 'conv2'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shipped weights of another model (mlp_ratio 4 -> 2)" in err[0] and "--force-ship" in err[0], err
    assert json.loads((weights / "manifest.json").read_text())["models"]["efficient_lvsm.pt"] == first
    assert main(["run", str(conv), "--no-progress", "--ship-weights", "--force-ship", "--set", f"output_dir={tmp_path / 'conv2'}"]) == 0
    replaced = json.loads((weights / "manifest.json").read_text())["models"]["efficient_lvsm.pt"]
    assert replaced["config"]["mlp_ratio"] == 2 and replaced["history"][-1]["sha256"] == first["sha256"]
    # An option no kind of this experiment reads is refused, not ignored.
    assert main(["run", str(conv), "--no-progress", "--checkpoint", str(weights / "efficient_lvsm.pt")]) == 2
    assert "--checkpoint is not read by kind 'convergence'" in capsys.readouterr().err


@pytest.mark.slow
def test_recorded_step_costs_merge_only_timings_from_the_latest_timings_machine():
    """A rebuild takes each arm's latest clean step cost, but never sets a step timed on one CPU beside one
    timed on another: an arm timed only elsewhere is listed as untimed."""
    from types import SimpleNamespace

    from harness.train.kinds import recorded_step_cost
    spec = {"name": "efficient_lvsm", "preset": "study"}
    prope = {**spec, "overrides": {"camera_encoding": "prope"}}
    gta = {**spec, "overrides": {"camera_encoding": "gta"}}
    point = {"step_cost": ["plucker", "prope", "gta"], "models": {"plucker": spec, "prope": prope, "gta": gta},
             "batch": 16, "rounds": 10}
    models = {"plucker": spec, "prope": prope, "gta": gta}

    def timing(device, commit, **ms):
        return {"status": "ok", "step_cost": list(ms), "models": models, "batch": 16, "rounds": 10, "device": device,
                "commit": commit, "step_ms": ms, "step_iqr_ms": {k: 1.0 for k in ms}}
    rows = [timing("cpu: old", "a", plucker=300.0, prope=400.0, gta=410.0),
            {**timing("cpu: new", "b", prope=200.0), "numerics": {"prope": {"kernel": "native"}}},
            timing("cpu: new", "c", plucker=150.0),
            {**timing("cpu: new", "d", gta=1.0), "batch": 8}]  # another setting: never taken
    merged = recorded_step_cost(SimpleNamespace(store=SimpleNamespace(rows=lambda: rows)), point)
    assert merged["device"] == "cpu: new" and merged["step_ms"] == {"plucker": 150.0, "prope": 200.0}
    assert merged["untimed"] == ["gta"] and merged["commit"] == "b, c"
    assert merged["numerics"] == {"prope": {"kernel": "native"}}


def test_step_cost_notes_name_each_arms_kernel_and_an_arm_whose_seeds_ran_different_numerics():
    from harness.train.summary import seconds_notes
    exp = load_experiment(Path(__file__).parents[1] / "experiments" / "camera_encoding.yaml")
    float32, native = "newton_schulz bfloat16 (float32 kernel)", "newton_schulz bfloat16 (native kernel)"
    table = pd.DataFrame([{"arm": "lact", "seed": 0, "numerics": float32, "contended_intervals": 0},
                          {"arm": "lact", "seed": 1, "numerics": native, "contended_intervals": 0},
                          {"arm": "efficient_lvsm", "seed": 0, "numerics": None, "contended_intervals": 0},
                          {"arm": "efficient_lvsm", "seed": 1, "numerics": None, "contended_intervals": 0}])
    step_costs = {"step_ms": {"lact": 600.0, "efficient_lvsm": 90.0}, "step_iqr_ms": {"lact": 5.0, "efficient_lvsm": 2.0},
                  "rounds": 10, "device": "cpu: X (1 thread)", "numerics": {"lact": {"newton_schulz": "bfloat16 (native kernel)"}}}
    notes = seconds_notes(exp, table, step_costs)
    assert f"lact 600.0 ms (IQR 5.0) [{native}], efficient_lvsm 90.0 ms (IQR 2.0)" in notes[0]
    differing = [note for note in notes if "different numerics" in note]
    assert differing == [f"lact: its seeds trained with different numerics (seed 0: {float32}; seed 1: {native}); "
                         "the seed range includes that"]


def test_from_records_rebuilds_the_tables_under_new_code_without_training(tmp_path, monkeypatch, capsys):
    """Under another code version the runs' rows no longer match their keys; --from-records takes the
    recorded runs trained with the same settings, trains nothing, measures the clean step cost, and refuses
    a run whose recorded settings differ."""
    conv = tiny_convergence(
        tmp_path / "conv.yaml", tmp_path / "conv", ["efficient_lvsm"],
        data={"options": {"count": 3, "views": 10, "supersample": 1}, "eval_options": {"seed": 1, "count": 2}, "n_input": 2,
              "n_target": 2, "eval_n_target": 2, "eval_scenes": 2, "normalize": False},
        train={"steps": 2, "val_every": 2, "checkpoint_every": 2, "threads": 1}, blur_sigmas=[1.0], cost={"runs": 1},
        step_cost_rounds=2)
    monkeypatch.setenv("LVSM_BENCH_CODE_VERSION", "old")
    assert main(["run", str(conv), "--no-progress"]) == 0
    checkpoint = tmp_path / "conv" / "runs" / "efficient_lvsm" / "checkpoint.pt"
    mtime = checkpoint.stat().st_mtime_ns
    monkeypatch.setenv("LVSM_BENCH_CODE_VERSION", "new")
    assert main(["run", str(conv), "--no-progress", "--from-records"]) == 0
    assert checkpoint.stat().st_mtime_ns == mtime
    final = pd.read_csv(tmp_path / "conv" / "final.csv")
    assert final["step_ms"].gt(0).all() and "built from the recorded runs" in (tmp_path / "conv" / "final.md").read_text()
    capsys.readouterr()
    assert main(["run", str(conv), "--no-progress", "--from-records", "--set", "train.steps=3"]) == 2
    err = capsys.readouterr().err
    assert "--from-records: the recorded arm efficient_lvsm seed 0 was written with train.steps=2" in err, err
    # A study read while it trains: an arm not trained yet is listed as such, and nothing is trained or timed.
    rows_before = len((tmp_path / "conv" / "rows.jsonl").read_text().splitlines())
    assert main(["run", str(conv), "--no-progress", "--from-records", "--set", "models=[efficient_lvsm, lvsm_decoder_only]"]) == 0
    report = read_report(tmp_path / "conv" / "report.json")
    assert "arm lvsm_decoder_only seed 0: not trained yet (rerun to resume)" in report.not_run
    assert set(pd.read_csv(tmp_path / "conv" / "final.csv")["arm"]) == {"efficient_lvsm"}
    assert not (tmp_path / "conv" / "runs" / "lvsm_decoder_only").exists()
    assert len((tmp_path / "conv" / "rows.jsonl").read_text().splitlines()) == rows_before


@pytest.mark.slow
def test_keep_recorded_resumes_a_study_across_code_versions(tmp_path, monkeypatch):
    """--keep-recorded keeps each run recorded with the settings asked for, whatever code version recorded
    it, and trains only the runs without one (an arm added, or a run whose settings changed)."""
    data = {"options": {"count": 3, "views": 10, "supersample": 1}, "eval_options": {"seed": 1, "count": 2}, "n_input": 2,
            "n_target": 2, "eval_n_target": 2, "eval_scenes": 2, "normalize": False}
    keys = dict(data=data, train={"steps": 2, "val_every": 2, "checkpoint_every": 2, "threads": 1}, blur_sigmas=[1.0],
                cost={"runs": 1}, step_cost_rounds=2)
    monkeypatch.setenv("LVSM_BENCH_CODE_VERSION", "old")
    assert main(["run", str(tiny_convergence(tmp_path / "conv.yaml", tmp_path / "conv", ["efficient_lvsm"], **keys)),
                 "--no-progress"]) == 0
    kept = tmp_path / "conv" / "runs" / "efficient_lvsm" / "checkpoint.pt"
    mtime = kept.stat().st_mtime_ns
    monkeypatch.setenv("LVSM_BENCH_CODE_VERSION", "new")
    both = tiny_convergence(tmp_path / "conv.yaml", tmp_path / "conv", ["efficient_lvsm", "lvsm_decoder_only"], **keys)
    assert main(["run", str(both), "--no-progress", "--keep-recorded"]) == 0
    assert kept.stat().st_mtime_ns == mtime  # not trained again
    assert (tmp_path / "conv" / "runs" / "lvsm_decoder_only" / "checkpoint.pt").is_file()
    assert set(pd.read_csv(tmp_path / "conv" / "final.csv")["arm"]) == {"efficient_lvsm", "lvsm_decoder_only"}


def test_arm_summary_compares_with_the_reference_against_the_seed_range():
    from harness.train.config import ConvergenceExperiment
    from harness.train.figures import pareto
    from harness.train.summary import arm_summary
    exp = ConvergenceExperiment(name="s", kind="convergence", seeds=[0, 1], reference="ref", models=[
        {"name": "ref", "model": "efficient_lvsm"}, {"name": "close", "model": "efficient_lvsm_final_context"},
        {"name": "far", "model": "lvsm_decoder_only", "published_diff_db": -1.5, "published_source": "paper"}])
    psnr = {"ref": (20.0, 20.4), "close": (20.1, 20.2), "far": (21.0, 21.2)}
    final = pd.DataFrame([{"arm": arm, "seed": seed, "final_psnr": value, "final_ssim": 0.5, "pose_swap_drop_db": 1.0,
                           "params": 10} for arm, values in psnr.items() for seed, value in enumerate(values)])
    summary = arm_summary(exp, final, {"far": {"params": 5, "gflops": 1.0, "latency_ms": 2.0}}, 19.0).set_index("arm")
    assert summary.loc["ref", "significance"] == "reference" and summary.loc["ref", "psnr_min"] == 20.0
    assert summary.loc["close", "diff_vs_reference_db"] == pytest.approx(-0.05)
    assert summary.loc["close", "significance"] == "not significant (seed range 0.40 dB)"
    assert summary.loc["far", "diff_vs_reference_db"] == pytest.approx(0.9)
    assert summary.loc["far", "significance"] == "exceeds seed range"
    assert summary.loc["far", "published"] == -1.5 and summary.loc["far", "params"] == 5
    assert summary.loc["far", "min_above_trivial_db"] == pytest.approx(2.0)
    # Pareto front: cheaper-and-better points only, by cost.
    assert pareto([1.0, 2.0, 3.0, 2.5], [10.0, 9.0, 12.0, 11.0]) == [0, 3, 2]


def test_dino_teacher_has_the_released_checkpoints_parameter_names(tmp_path, monkeypatch):
    from harness.train.repa import load_teacher
    from harness.train.teachers import ViTTeacher, dino_vit_b16
    with torch.device("meta"):
        teacher = dino_vit_b16()
    shapes = {k: tuple(v.shape) for k, v in teacher.state_dict().items()}
    assert shapes["cls_token"] == (1, 1, 768) and shapes["pos_embed"] == (1, 197, 768)
    assert shapes["patch_embed.proj.weight"] == (768, 3, 16, 16) and shapes["blocks.11.attn.qkv.weight"] == (2304, 768)
    assert shapes["blocks.0.mlp.fc1.weight"] == (3072, 768) and "norm.bias" in shapes and "mean" not in shapes
    assert sum(torch.Size(s).numel() for s in shapes.values()) == 85_798_656  # DINO ViT-B/16 without its head
    # A small one through the REPA loader: weights by path ($ENV allowed), patch tokens out, class token dropped.
    small = ViTTeacher(patch=8, dim=32, depth=1, heads=2, pretrain_size=32, image_size=32)
    torch.save(small.state_dict(), tmp_path / "teacher.pt")
    plugin = tmp_path / "teacher.py"
    plugin.write_text("from harness.train.teachers import ViTTeacher\n"
                      "def small():\n    return ViTTeacher(patch=8, dim=32, depth=1, heads=2, pretrain_size=32, image_size=32)\n")
    monkeypatch.setenv("TEACHER", str(tmp_path / "teacher.pt"))
    loaded = load_teacher(f"{plugin}:small", "$TEACHER")
    out = loaded(torch.rand(2, 3, 16, 16))
    assert out.shape == (2, 16, 32) and not any(p.requires_grad for p in loaded.parameters())


def test_an_arm_is_compared_with_its_own_reference_arm():
    from harness.train.config import ConvergenceExperiment
    from harness.train.summary import arm_summary
    exp = ConvergenceExperiment(name="s", kind="convergence", seeds=[0, 1], models=[
        {"name": "a", "model": "efficient_lvsm"}, {"name": "a_prope", "model": "efficient_lvsm", "reference": "a"},
        {"name": "b", "model": "lvsm_decoder_only"}, {"name": "b_prope", "model": "lvsm_decoder_only", "reference": "b"}])
    psnr = {"a": (20.0, 20.2), "a_prope": (21.0, 21.1), "b": (22.0, 22.1), "b_prope": (22.05, 22.1)}
    final = pd.DataFrame([{"arm": arm, "seed": seed, "final_psnr": value, "final_ssim": 0.5, "pose_swap_drop_db": 1.0,
                           "params": 10} for arm, values in psnr.items() for seed, value in enumerate(values)])
    summary = arm_summary(exp, final, {}, None).set_index("arm")
    assert summary.loc["a_prope", "reference"] == "a" and summary.loc["a_prope", "diff_vs_reference_db"] == pytest.approx(0.95)
    assert summary.loc["a_prope", "significance"] == "exceeds seed range"
    assert summary.loc["b_prope", "significance"].startswith("not significant")
    assert summary.loc["a", "significance"] == "reference" and pd.isna(summary.loc["b", "diff_vs_reference_db"])
    with pytest.raises(ValueError, match=r"models.a_prope.reference: 'c' is not an arm"):
        ConvergenceExperiment(name="s", kind="convergence", models=[
            {"name": "a", "model": "efficient_lvsm"}, {"name": "a_prope", "model": "efficient_lvsm", "reference": "c"}])
