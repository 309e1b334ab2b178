"""Image metrics against direct computations, the per-scene-then-mean aggregation, and the LPIPS
backbone handling (absent file, random backbone for shapes only, loading a backbone file)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from harness import metrics
from harness.metrics import (LPIPSMetric, LPIPSUnavailableWarning, image_metrics, mean_over_scenes, psnr,
                             scene_means, ssim)


def _pair(n=3, size=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(n, 3, size, size, generator=g)
    # Renders slightly outside [0,1] exercise the clamp.
    pred = target + 0.15 * torch.randn(n, 3, size, size, generator=g)
    return pred, target


def test_psnr_matches_numpy_formula_on_clamped_images():
    pred, target = _pair()
    p = np.clip(pred.numpy().astype(np.float64), 0, 1)
    t = np.clip(target.numpy().astype(np.float64), 0, 1)
    expected = [-10 * np.log10(np.mean((p[i] - t[i]) ** 2)) for i in range(len(p))]
    np.testing.assert_allclose(psnr(pred, target).numpy(), expected, rtol=0, atol=1e-6)
    # Without the clamp the value differs: the test would notice a missing clamp.
    unclamped = -10 * np.log10(np.mean((pred.numpy()[0].astype(np.float64) - t[0]) ** 2))
    assert abs(unclamped - expected[0]) > 1e-3


def test_ssim_matches_skimage_with_protocol_settings():
    pred, target = _pair(size=32)
    ours = ssim(pred, target).numpy()
    expected = [structural_similarity(target[i].clamp(0, 1).numpy(), pred[i].clamp(0, 1).numpy(), win_size=11,
                                      gaussian_weights=True, channel_axis=0, data_range=1.0) for i in range(3)]
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
    assert ours.shape == (3,) and np.all(ours < 1)


def test_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\[n,3,h,w\]"):
        psnr(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 4))


def test_per_scene_then_mean_aggregation_with_unequal_targets():
    views = [
        {"model": "m", "scene": "a", "psnr": 10.0, "ssim": 0.5, "lpips": 0.4},
        {"model": "m", "scene": "b", "psnr": 20.0, "ssim": 0.7, "lpips": 0.2},
        {"model": "m", "scene": "b", "psnr": 30.0, "ssim": 0.8, "lpips": 0.1},
        {"model": "m", "scene": "b", "psnr": 40.0, "ssim": 0.9, "lpips": 0.0},
    ]
    per_scene = scene_means(views)
    assert per_scene.set_index("scene")["psnr"].to_dict() == pytest.approx({"a": 10.0, "b": 30.0})
    assert per_scene.set_index("scene")["targets"].to_dict() == {"a": 1, "b": 3}
    summary = mean_over_scenes(per_scene).iloc[0]
    # Hand-computed: (10 + 30) / 2 = 20, not the flat mean over views (25).
    assert summary["psnr"] == pytest.approx(20.0, abs=1e-12)
    assert summary["ssim"] == pytest.approx((0.5 + 0.8) / 2, abs=1e-12)
    assert summary["lpips"] == pytest.approx((0.4 + 0.1) / 2, abs=1e-12)
    assert summary["scenes"] == 2


def test_aggregation_keeps_missing_lpips_as_na():
    views = [{"model": "m", "scene": s, "psnr": 1.0, "ssim": 0.1, "lpips": None} for s in "ab"]
    summary = mean_over_scenes(scene_means(views)).iloc[0]
    assert summary["lpips"] is None and summary["psnr"] == 1.0


def test_lpips_without_backbone_is_na_with_one_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(metrics, "_WARNED", set())

    def no_download(*args, **kwargs):
        raise AssertionError("LPIPS tried to download its backbone")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)

    with pytest.warns(LPIPSUnavailableWarning) as caught:
        metric = LPIPSMetric("vgg")
    message = str(caught[0].message)
    expected_path = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert "vgg16-397923af.pth" in message and str(expected_path) in message and "n/a" in message
    assert not metric.available and metric.label == "n/a"
    pred, target = _pair()
    assert metric(pred, target) is None
    assert all(row["lpips"] is None for row in image_metrics(pred, target, metric))
    with warnings.catch_warnings():
        warnings.simplefilter("error", LPIPSUnavailableWarning)
        assert not LPIPSMetric("vgg").available  # one warning per process, not one per model


def test_lpips_random_backbone_shapes_and_batching_only():
    """pnet_rand backbone: NOT LPIPS; checks shapes and that batching does not change per-image values."""
    pred, target = _pair(n=5, size=32)
    batched = LPIPSMetric("alex", random_backbone=True, batch_size=2)
    torch.manual_seed(0)
    values = batched(pred, target)
    assert values.shape == (5,) and values.dtype == torch.float64
    assert batched.label == "alex-random-backbone"
    one_by_one = torch.cat([batched(pred[i:i + 1], target[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(values, one_by_one, rtol=0, atol=1e-6)
    assert batched(target, target).abs().max() < 1e-6


def test_lpips_reads_images_in_0_1_as_the_protocol_does():
    """The protocol calls lpips with normalize=True: images in [0,1] are mapped to the [-1,1] the
    network expects. So the metric equals the bare network on 2x-1 scaled (clamped) images, and not
    the network on the [0,1] images themselves. (Random backbone: any fixed network shows the scaling.)"""
    pred, target = _pair(n=3, size=32)
    metric = LPIPSMetric("alex", random_backbone=True)
    p, t = pred.clamp(0, 1), target.clamp(0, 1)
    with torch.no_grad():
        expected = metric.network(t * 2 - 1, p * 2 - 1).flatten().double()
        unscaled = metric.network(t, p).flatten().double()
    torch.testing.assert_close(metric(pred, target), expected, rtol=0, atol=1e-6)
    assert (unscaled - expected).abs().min() > 1e-4


def test_lpips_loads_backbone_file_random_weights_shapes_only(tmp_path):
    """A backbone file written from a random AlexNet: checks the file is found and loaded, not LPIPS values."""
    import torchvision
    torch.manual_seed(1)
    features = {f"features.{k}": v for k, v in torchvision.models.alexnet(weights=None).features.state_dict().items()}
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(features, path)
    metric = LPIPSMetric("alex", backbone=tmp_path)  # a folder holding the file works as well as the file
    assert metric.available and metric.backbone_path == path and metric.label == "alex"
    torch.testing.assert_close(metric._model.net.slice1[0].weight, features["features.0.weight"])
    pred, target = _pair(n=2, size=32)
    assert metric(pred, target).shape == (2,)


def test_backbone_urls_are_torchvisions():
    import torchvision.models as tvm
    assert metrics.BACKBONE_URLS == {"vgg": tvm.VGG16_Weights.IMAGENET1K_V1.url, "alex": tvm.AlexNet_Weights.IMAGENET1K_V1.url}


def test_lpips_rejects_a_file_that_is_not_a_backbone(tmp_path):
    path = tmp_path / "vgg16-397923af.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, path)
    with pytest.raises(KeyError, match="vgg16-397923af.pth"):
        LPIPSMetric("vgg", backbone=path)
