"""Checkpoints (ours and official) and the evaluation runner end to end on tiny models and a few
synthetic scenes: tables, resume after an interruption, failures recorded. (Missing data is refused in
one line: test_inputs_honoured.)"""
from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from conftest import load_fixture, random_views
from harness.evaluate import inputs, scoring
from harness.checkpoint import load_checkpoint, save_checkpoint
from harness.cli import main
from harness.errors import CheckpointError, ConfigError, DataError
from harness.records import RecordStore
from harness.report import read_report
from harness.schema import RunOptions, load_experiment, run_spec
from models import build_model

SCENES = 4
pytestmark = pytest.mark.filterwarnings("ignore::harness.metrics.LPIPSUnavailableWarning")  # expected: no backbone here


@pytest.fixture(autouse=True)
def _quiet(monkeypatch, tmp_path):
    # Fixed resume keys whatever the checkout's state, and no LPIPS backbone (the CI case).
    monkeypatch.setenv("LVSM_BENCH_CODE_VERSION", "test")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def _experiment_file(tmp_path: Path, **changes) -> Path:
    spec = {
        "kind": "evaluate", "name": "eval_test", "output_dir": str(tmp_path / "out"),
        "models": [{"name": "lvsm_decoder_only", "preset": "tiny"}, {"name": "efficient_lvsm", "preset": "tiny"}],
        "data": {"source": "synthetic_scene", "options": {"count": SCENES, "seed": 0, "image_size": 32},
                 "n_input": 2, "n_target": 2},
        "grid_scenes": 2,
    }
    spec.update(changes)
    path = tmp_path / "eval_test.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _run(path: Path, **options):
    return run_spec(load_experiment(path), RunOptions(progress=False, **options))


def test_checkpoint_round_trip(tmp_path):
    model = build_model("lvsm_encoder_decoder", "tiny").eval()
    path = save_checkpoint(tmp_path / "ckpt" / "model.pt", model, step=123, preset="tiny", extra={"note": "x"})
    loaded, meta = load_checkpoint(path)
    assert (meta.model, meta.step, meta.preset, meta.source, meta.extra) == ("lvsm_encoder_decoder", 123, "tiny", "ours", {"note": "x"})
    assert loaded.config == model.config and meta.weights_label == "checkpoint step 123"
    views = random_views(1, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*views), model(*views), rtol=0, atol=0)
    assert list(path.parent.iterdir()) == [path]  # atomic save leaves no temporary file behind
    with pytest.raises(CheckpointError, match="holds model 'lvsm_encoder_decoder'"):
        load_checkpoint(path, model_name="efficient_lvsm")


@pytest.mark.parity
def test_official_checkpoint_needs_and_uses_model_name(tmp_path):
    fixture = load_fixture("efficient_lvsm")
    path = tmp_path / "official.pt"
    torch.save({"model": fixture["state_dict"], "step": 9}, path)
    with pytest.raises(ValueError, match="give the model name"):
        load_checkpoint(path)
    model, meta = load_checkpoint(path, model_name="efficient_lvsm")
    assert meta.source == "official" and meta.step == 9 and meta.weights_label == "official"
    with torch.no_grad():
        render = model(fixture["input_image"], fixture["input_c2w"], fixture["input_fxfycxcy"],
                       fixture["target_c2w"], fixture["target_fxfycxcy"])
    assert (render - fixture["render"]).abs().max().item() <= 1e-5


@pytest.mark.slow
def test_end_to_end_tables_grid_and_random_init_label(tmp_path):
    result = _run(_experiment_file(tmp_path))
    out = tmp_path / "out"
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False)  # keep the literal n/a
    assert {"model", "psnr", "ssim", "lpips", "scenes", "weights", "source"} <= set(summary.columns)
    assert list(summary["model"]) == ["lvsm_decoder_only", "efficient_lvsm"]
    assert set(summary["weights"]) == {"random-init"} and set(summary["scenes"]) == {SCENES}
    assert set(summary["lpips"]) == {"n/a"} and all(summary["source"].str.startswith("measured: cpu"))
    for name in ("summary.md", "summary.tex", "per_scene.csv", "grid.png", "rows.jsonl", "manifest.json", "report.json"):
        assert (out / name).stat().st_size > 0
    # a labelled strip of renders per scene (context, ground truth, each model with its PSNR), named in the report
    scenes = sorted({r["scene"] for r in RecordStore(out / "rows.jsonl").rows()})
    assert sorted(p.stem for p in (out / "scenes").glob("*.png")) == scenes
    assert {f.file for f in read_report(out / "report.json").figures} >= {f"scenes/{scene}.png" for scene in scenes}
    md = (out / "summary.md").read_text()
    assert "random-init" in md and "vgg16-397923af.pth" in md  # LPIPS n/a is explained in the table
    rows = RecordStore(out / "rows.jsonl").rows()
    assert len(rows) == 2 * SCENES and sum(len(r["per_view"]) for r in rows) == 2 * SCENES * 2
    # Independently of the harness: render the first scene with the same random-init model and score it.
    from harness.data import collate, evaluation_examples
    spec = load_experiment(_experiment_file(tmp_path))
    data = inputs.resolve_data(spec.data)
    scene = next(iter(data.index))
    example = next(iter(evaluation_examples(data.source, {scene: data.index[scene]})))
    torch.manual_seed(spec.seed)
    model = build_model("efficient_lvsm", "tiny").eval()
    batch = collate([example])
    with torch.no_grad():
        render = model(batch["input_images"], batch["input_c2w"], batch["input_fxfycxcy"], batch["target_c2w"],
                       batch["target_fxfycxcy"])[0].clamp(0, 1).double()
    mse = ((render - example.target_images.double()) ** 2).flatten(1).mean(1)
    expected = float((-10 * torch.log10(mse)).mean())
    measured = result.per_scene.set_index(["model", "scene"]).loc[("efficient_lvsm", scene), "psnr"]
    assert measured == pytest.approx(expected, abs=1e-4)
    # The summary is the mean over scenes of the per-scene means.
    per_scene = result.per_scene[result.per_scene["model"] == "efficient_lvsm"]
    assert summary.loc[1, "psnr"] == pytest.approx(per_scene["psnr"].mean(), rel=1e-9)


@pytest.mark.slow
def test_interrupted_run_resumes_without_recomputing(tmp_path, monkeypatch):
    path = _experiment_file(tmp_path)
    real_render = scoring.render
    calls = {"n": 0}

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == 3:  # model 1 has evaluated 2 scenes when the user presses Ctrl-C
            raise KeyboardInterrupt
        return real_render(*args)

    monkeypatch.setattr(scoring, "render", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(path)
    assert len(RecordStore(tmp_path / "out" / "rows.jsonl").rows()) == 2

    rendered: list[list[str]] = []

    def counting(model, batch, *args):
        rendered.append(list(batch["scene"]))
        return real_render(model, batch, *args)

    monkeypatch.setattr(scoring, "render", counting)
    result = _run(path)
    assert result.computed == 2 * SCENES - 2
    evaluated = [s for group in rendered for s in group]
    drawn = 2 * SCENES  # every scene rendered once more per model for its strip (the grid reuses those renders)
    assert len(evaluated) == 2 * SCENES - 2 + drawn
    assert set(result.summary["scenes"]) == {SCENES}

    rendered.clear()
    again = _run(path)
    assert again.computed == 0 and len(rendered) == drawn
    pd.testing.assert_frame_equal(again.summary, result.summary)


@pytest.mark.slow
def test_a_failing_scene_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    path = _experiment_file(tmp_path, models=[{"name": "lvsm_encoder_decoder", "preset": "tiny"}])
    real_render = scoring.render
    first = inputs.resolve_data(load_experiment(path).data).index
    bad_scene = list(first)[1]

    def flaky(model, batch, *args):
        if bad_scene in batch["scene"]:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_render(model, batch, *args)

    monkeypatch.setattr(scoring, "render", flaky)
    result = _run(path)
    assert result.failed == 1 and int(result.summary.loc[0, "failed"]) == 1 and int(result.summary.loc[0, "scenes"]) == SCENES - 1
    errors = [r for r in RecordStore(tmp_path / "out" / "rows.jsonl").rows() if r.get("status") == "oom"]
    assert len(errors) == 1 and "simulated" in errors[0]["error"] and errors[0]["scene"] == bad_scene
    monkeypatch.setattr(scoring, "render", real_render)
    retried = _run(path)
    assert retried.computed == 1 and int(retried.summary.loc[0, "scenes"]) == SCENES and int(retried.summary.loc[0, "failed"]) == 0


@pytest.mark.slow
def test_cli_evaluates_our_checkpoint_and_prints_published_rows(tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "m.pt", build_model("efficient_lvsm", "tiny"), step=7, preset="tiny")
    published = {"source": "a paper", "rows": [{"model": "Theirs", "psnr": 30.0, "ssim": 0.9, "lpips": 0.1, "source": "Table 1"}]}
    path = _experiment_file(tmp_path, published=published, grid_scenes=0)
    assert main(["run", str(path), "--checkpoint", str(ckpt), "--set", "data.max_scenes=2", "--no-progress"]) == 0
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert list(summary["model"]) == ["efficient_lvsm", "Theirs"]
    assert summary.loc[0, "weights"] == "checkpoint step 7" and summary.loc[0, "scenes"] == 2
    assert summary.loc[1, "source"] == "published: Table 1" and summary.loc[1, "psnr"] == 30.0
    assert not (tmp_path / "out" / "grid.png").exists()


def _fake_re10k(root: Path, scenes=("s0", "s1"), frames=6) -> None:
    """A few random frames in pixelSplat's chunk layout (JPEG bytes, normalized intrinsics, w2c rows)."""
    folder = root / "test"
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    chunk = []
    for key in scenes:
        jpegs = []
        for _ in range(frames):
            buffer = io.BytesIO()
            Image.fromarray((torch.rand(36, 64, 3, generator=g) * 255).byte().numpy()).save(buffer, format="JPEG")
            jpegs.append(torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8))
        w2c = torch.eye(4)[:3].reshape(1, 12).repeat(frames, 1)
        w2c[:, 3] = torch.arange(frames) * 0.1  # x translation per frame
        cameras = torch.cat([torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.0, 0.0]]).repeat(frames, 1), w2c], 1)
        chunk.append({"key": key, "url": "", "timestamps": torch.arange(frames), "cameras": cameras, "images": jpegs})
    torch.save(chunk, folder / "000000.torch")
    (folder / "index.json").write_text(json.dumps({key: "000000.torch" for key in scenes}))
    index = {"s0": {"context": [0, 5], "target": [1, 2, 3]}, "s1": {"context": [0, 4], "target": [2]}, "gone": None}
    (root / "evaluation_index_re10k.json").write_text(json.dumps(index))


@pytest.mark.slow
def test_table_re10k_with_data_puts_published_rows_beside_ours(tmp_path, monkeypatch):
    _fake_re10k(tmp_path / "re10k")
    monkeypatch.setenv("RE10K_DIR", str(tmp_path / "re10k"))
    monkeypatch.setenv("RE10K_INDEX", str(tmp_path / "re10k" / "evaluation_index_re10k.json"))
    experiment = load_experiment(Path(__file__).parent.parent / "experiments" / "table_re10k.yaml",
                                 [f"output_dir={tmp_path / 'out'}", "data.options.image_size=32", "grid_scenes=1"])
    result = run_spec(experiment, RunOptions(preset="tiny", progress=False))
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    ours = summary[summary["weights"] == "random-init"]
    assert list(ours["model"]) == ["lvsm_decoder_only", "lvsm_encoder_decoder", "efficient_lvsm"]
    assert set(ours["scenes"]) == {2} and set(ours["preset"]) == {"tiny"}
    published = summary[summary["weights"] == "published"].set_index("model")
    # The variants' rows come from their cards, the other methods' from the YAML.
    assert published.loc["LVSM decoder-only", "psnr"] == 29.67
    assert published.loc["LVSM decoder-only", "source"].startswith("published: LVSM paper Table 1")
    assert published.loc["Efficient-LVSM", "source"].startswith("published: Efficient-LVSM release README (256 checkpoint")
    assert published.loc["pixelSplat", "source"] == "published: LVSM paper Table 1"
    # Scene s0 has 3 targets, s1 one: the summary weighs the two scenes equally.
    scenes = result.per_scene[result.per_scene["model"] == "efficient_lvsm"].set_index("scene")
    assert scenes.loc["s0", "targets"] == 3 and scenes.loc["s1", "targets"] == 1
    assert ours.iloc[2]["psnr"] == pytest.approx(scenes["psnr"].mean(), rel=1e-9)


def test_bad_experiment_values_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="models.0.name: unknown model 'lvsm'"):
        load_experiment(_experiment_file(tmp_path, models=[{"name": "lvsm"}]))
    with pytest.raises(ConfigError, match="label 'efficient_lvsm' used twice"):
        load_experiment(_experiment_file(tmp_path, models=[{"name": "efficient_lvsm"}, {"name": "efficient_lvsm"}]))
    with pytest.raises(ConfigError, match="data.max_scenes: Input should be greater than or equal to 0 \\(got -1\\)"):
        load_experiment(_experiment_file(tmp_path), ["data.max_scenes=-1"])
    with pytest.raises(ConfigError, match=r"published.rows.0.psnrr: unknown key"):
        load_experiment(_experiment_file(tmp_path, published={"source": "s", "rows": [{"model": "x", "psnr": 1, "psnrr": 2}]}))


@pytest.mark.slow
def test_bad_data_for_one_scene_is_recorded_and_the_cli_exits_1(tmp_path, monkeypatch, capsys):
    path = _experiment_file(tmp_path, models=[{"name": "efficient_lvsm", "preset": "tiny"}], grid_scenes=0, scene_renders=0)
    real_example = scoring.Evaluation._example
    bad = list(inputs.resolve_data(load_experiment(path).data).index)[2]

    def corrupt(self, scene):
        if scene == bad:
            raise DataError(f"scene {scene}: image 3.png is not a readable image (simulated)")
        return real_example(self, scene)

    monkeypatch.setattr(scoring.Evaluation, "_example", corrupt)
    assert main(["run", str(path), "--no-progress"]) == 1
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert int(summary.loc[0, "scenes"]) == SCENES - 1 and int(summary.loc[0, "failed"]) == 1
    assert "not a readable image (simulated)" in (tmp_path / "out" / "summary.md").read_text()
    monkeypatch.setattr(scoring.Evaluation, "_example", real_example)
    rendered = []
    real_render = scoring.render
    monkeypatch.setattr(scoring, "render", lambda model, batch, *a: rendered.append(list(batch["scene"])) or real_render(model, batch, *a))
    assert main(["run", str(path), "--no-progress"]) == 0
    assert rendered == [[bad]]  # the rerun retries only the failed scene


@pytest.mark.slow
def test_a_model_that_fails_everywhere_exits_1_with_its_reason(tmp_path, monkeypatch):
    path = _experiment_file(tmp_path, models=[{"name": "efficient_lvsm", "preset": "tiny"}], grid_scenes=0, scene_renders=0)
    monkeypatch.setattr(scoring, "render", lambda *a: (_ for _ in ()).throw(RuntimeError("shape mismatch (simulated)")))
    assert main(["run", str(path), "--no-progress"]) == 1
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert int(summary.loc[0, "failed"]) == SCENES and summary.loc[0, "source"].startswith("not measured")
    assert "shape mismatch (simulated)" in (tmp_path / "out" / "summary.md").read_text()


def _fake_object_renders(root: Path, scenes: int = 2, views: int = 8) -> None:
    """GSO/ABO-style renders in LVSM's layout: images/<scene>/*.png + metadata/<scene>.json (w2c, pixel fxfycxcy)."""
    from harness.data import open_source
    source = open_source("synthetic_object", count=scenes, views=views, image_size=32, seed=5)
    (root / "metadata").mkdir(parents=True)
    for i in range(scenes):
        scene = source[i]
        folder = root / "images" / f"object_{i}"
        folder.mkdir(parents=True)
        frames = []
        for j in range(views):
            path = folder / f"{j:05d}.png"
            Image.fromarray((scene.images[j].permute(1, 2, 0) * 255).round().byte().numpy()).save(path)
            frames.append({"image_path": str(path), "fxfycxcy": scene.fxfycxcy[j].tolist(),
                           "w2c": torch.linalg.inv(scene.c2w[j]).tolist()})
        (root / "metadata" / f"object_{i}.json").write_text(json.dumps({"scene_name": f"object_{i}", "frames": frames}))


@pytest.mark.slow
def test_table_objects_runs_on_a_folder_of_renders_with_the_published_object_rows(tmp_path, monkeypatch):
    _fake_object_renders(tmp_path / "gso")
    monkeypatch.setenv("OBJECTS_DIR", str(tmp_path / "gso"))
    experiment = load_experiment(Path(__file__).parent.parent / "experiments" / "table_objects.yaml",
                                 [f"output_dir={tmp_path / 'out'}", "data.options.image_size=32", "data.n_input=2", "grid_scenes=0"])
    run_spec(experiment, RunOptions(preset="tiny", progress=False))
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    ours = summary[summary["weights"] == "random-init"]
    assert list(ours["model"]) == ["lvsm_decoder_only", "lvsm_encoder_decoder", "efficient_lvsm", "lact"] and set(ours["scenes"]) == {2}
    published = summary[summary["weights"] == "published"].set_index("model")
    assert published.loc["LVSM decoder-only", "psnr"] == 32.36 and published.loc["GS-LRM (GSO)", "psnr"] == 30.52
    assert "unverified" in published.loc["Efficient-LVSM", "source"]
