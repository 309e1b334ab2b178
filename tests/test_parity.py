"""The parity kind end to end against a stand-in "official" checkout written here: a model module and
a data loader module with the official class names and call signatures (built on this project's
code, so both sides agree exactly), its YAML config and metric functions. The real comparison runs
against the official repositories (`make parity`); this covers the plumbing without them."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from harness.schema import RunOptions, load_experiment, run_spec

MODEL = '''
import torch
from models import DecoderOnlyConfig
from models.lvsm_decoder_only import LVSMDecoderOnly


class Result(dict):
    __getattr__ = dict.__getitem__


class Images2LatentScene(LVSMDecoderOnly):
    """The official decoder-only's constructor and forward(data_batch, has_target_image) -> .render."""

    def __init__(self, config):
        t = config.model.transformer
        super().__init__(DecoderOnlyConfig(image_size=config.model.image_tokenizer.image_size, dim=t.d, head_dim=t.d_head,
                                           depth=t.n_layer, patch_size=config.model.image_tokenizer.patch_size))
        self.official_config = config  # their config, read by attribute

    def train(self, mode=True):  # the official override returns None
        super().train(mode)

    def forward(self, data_batch, has_target_image=True):
        n = self.official_config.training.num_input_views
        c2w, k = data_batch["c2w"], data_batch["fxfycxcy"]
        render = super().forward(data_batch["image"][:, :n], c2w[:, :n], k[:, :n], c2w[:, n:], k[:, n:])
        return Result(render=render)
'''

DATASET = '''
import json
from harness.data import make_example, open_source


class Dataset:
    """The official loader's constructor (a config) and item (image, c2w, fxfycxcy of context + targets)."""

    def __init__(self, config):
        self.config = config
        self.paths = open(config.training.dataset_path).read().split()
        self.views = json.load(open(config.inference.view_idx_file_path))

    def __getitem__(self, idx):
        import pathlib
        path = pathlib.Path(self.paths[idx])
        size = self.config.model.image_tokenizer.image_size
        source = open_source("lvsm_json", root=str(path.parent.parent), image_size=size)
        views = self.views[path.stem]
        ex = make_example(source, source.index_of(path.stem), views["context"], views["target"])
        import torch
        return {"image": torch.cat([ex.input_images, ex.target_images]), "c2w": torch.cat([ex.input_c2w, ex.target_c2w]),
                "fxfycxcy": torch.cat([ex.input_fxfycxcy, ex.target_fxfycxcy])}
'''

METRICS = '''
from harness.metrics import psnr, ssim


def compute_psnr(ground_truth, predicted):
    return psnr(predicted, ground_truth)


def compute_ssim(ground_truth, predicted):
    return ssim(predicted, ground_truth)
'''

CONFIG = {
    "model": {"class_name": "model.stand_in.Images2LatentScene",
              "image_tokenizer": {"image_size": 256, "patch_size": 8, "in_channels": 9},
              "target_pose_tokenizer": {"image_size": 256, "patch_size": 8, "in_channels": 6},
              "transformer": {"d": 768, "d_head": 64, "n_layer": 24, "use_qk_norm": True}},
    "training": {"lpips_loss_weight": 0.0, "perceptual_loss_weight": 0.5},
}


@pytest.fixture
def checkout(tmp_path):
    root = tmp_path / "official_lvsm"
    for path, text in {"model/__init__.py": "", "model/stand_in.py": MODEL, "data/__init__.py": "",
                       "data/dataset_scene.py": DATASET, "utils/__init__.py": "", "utils/metric_utils.py": METRICS,
                       "configs/LVSM_scene_decoder_only.yaml": yaml.safe_dump(CONFIG)}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(textwrap.dedent(text))
    return root


@pytest.mark.slow
def test_parity_runs_end_to_end_against_a_stand_in_official_checkout(checkout, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LVSM_BENCH_CODE_VERSION", "test")
    monkeypatch.delenv("OFFICIAL_EFFICIENT_LVSM", raising=False)
    spec = {"kind": "parity", "name": "parity_test", "output_dir": str(tmp_path / "out"), "preset": "tiny",
            "models": ["lvsm_decoder_only", "efficient_lvsm"], "points": [{"n_input": 2, "n_target": 1}],
            "rounds": 2, "warmup": 1, "checkouts": {"OFFICIAL_LVSM": str(checkout), "OFFICIAL_EFFICIENT_LVSM": "$OFFICIAL_EFFICIENT_LVSM"},
            "loader_image_size": 32}
    path = tmp_path / "parity_test.yaml"
    path.write_text(yaml.safe_dump(spec))
    rows = run_spec(load_experiment(path), RunOptions(progress=False))
    printed = capsys.readouterr().out
    assert "skipped: efficient_lvsm (no official checkout given: OFFICIAL_EFFICIENT_LVSM)" in printed
    model, loader = (next(r for r in rows if r["part"] == part) for part in ("model", "loader"))
    assert model["status"] == "ok" and loader["status"] == "ok", (model.get("error"), loader.get("error"))
    assert model["max_render_diff"] == 0 and model["flops_equal"] and model["gflops_ours"] > 0 and model["rounds"] == 2
    assert model["ratio_official_over_ours"] > 0 and model["ratio_iqr"] >= 0
    assert loader["image_shape_ours"] == [5, 3, 32, 32] and loader["max_image_diff"] == 0 and loader["max_c2w_diff"] == 0
    assert loader["our_source"] == "re10k" and loader["converter"].startswith("PIL decode")
    assert loader["max_psnr_diff_db"] < 1e-9
    tables = (tmp_path / "out" / "parity_models.md").read_text(), (tmp_path / "out" / "parity_loader.md").read_text()
    assert "LVSM decoder-only" in tables[0] and "xformers -> torch SDPA" in tables[0]
    assert "built-in RealEstate10K chunk" in tables[1]
    assert (tmp_path / "out" / "manifest.json").is_file()
    # Their packages were imported from the checkout only for the run.
    assert not any(name == "model" or name.startswith(("model.", "xformers")) for name in sys.modules)


def test_a_directory_that_is_no_official_checkout_is_one_line(tmp_path):
    from harness.errors import MissingResource
    from harness.parity.official import official_code
    with pytest.raises(MissingResource, match="OFFICIAL_LVSM=.*: not a checkout of Haian-Jin/LVSM"):
        with official_code(tmp_path, "Haian-Jin/LVSM"):
            pass
    with pytest.raises(MissingResource, match=r"OFFICIAL_LACT=.*: not a checkout of a1600012888/LaCT \(no lact_nvs/model.py\)"):
        with official_code(tmp_path, "a1600012888/LaCT"):
            pass


@pytest.mark.slow
def test_a_wrong_checkout_stops_the_run_before_any_work(tmp_path, monkeypatch):
    """One line naming the variable and what is missing, exit status 2, nothing measured or written."""
    import subprocess
    out = tmp_path / "out"
    spec = {"kind": "parity", "name": "parity_test", "output_dir": str(out), "preset": "tiny",
            "points": [{"n_input": 2, "n_target": 1}], "checkouts": {"OFFICIAL_LACT": str(tmp_path)}}
    path = tmp_path / "parity_test.yaml"
    path.write_text(yaml.safe_dump(spec))
    done = subprocess.run([sys.executable, "-m", "harness", "run", str(path)], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent, timeout=300)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "OFFICIAL_LACT=" in errors[0] and "a1600012888/LaCT" in errors[0], done.stderr
    assert "Traceback" not in done.stderr and not (out / "rows.jsonl").exists()
