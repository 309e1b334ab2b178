"""Validation on the fixed split: the model's PSNR/SSIM, the same with the target cameras swapped,
and three predictors that ignore the target camera's content (the bars a model must clear)."""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch.nn import functional as F

from .. import metrics
from ..runtime import autocast
from .data import EvalSplit

# A predictor maps one collated batch to renders [b, m, 3, h, w].
Predictor = Callable[[dict], torch.Tensor]


def score_renders(rendered: Iterable[tuple[torch.Tensor, dict]], label: str = "model",
                  with_ssim: bool = True) -> dict[str, float]:
    """The evaluation protocol: per view, then mean over each scene's targets, then over scenes.
    `rendered`: (renders [b, m, 3, h, w], the batch whose targets they render) pairs, read one at a time."""
    rows = []
    for renders, batch in rendered:
        renders, targets = renders.float().cpu(), batch["target_images"].float().cpu()
        b, m = targets.shape[:2]
        flat_r, flat_t = renders.flatten(0, 1), targets.flatten(0, 1)
        psnr = metrics.psnr(flat_r, flat_t)
        ssim = metrics.ssim(flat_r, flat_t) if with_ssim else torch.full((b * m,), float("nan"), dtype=torch.float64)
        for k in range(b * m):
            rows.append({"model": label, "scene": batch["scene"][k // m], "psnr": float(psnr[k]),
                         "ssim": float(ssim[k]), "lpips": None})
    summary = metrics.mean_over_scenes(metrics.scene_means(rows)).iloc[0]
    ssim_value = summary["ssim"]
    return {"psnr": float(summary["psnr"]),
            "ssim": float(ssim_value) if ssim_value is not None and with_ssim else float("nan"),
            "scenes": int(summary["scenes"])}


def score(predict: Predictor, split: EvalSplit, label: str = "model", with_ssim: bool = True) -> dict[str, float]:
    """`predict` scored on the split by the evaluation protocol (`score_renders`)."""
    return score_renders(((predict(batch), batch) for batch in split.batches), label, with_ssim)


def model_predictor(model: torch.nn.Module, device: torch.device, dtype: str, swap_targets: bool = False) -> Predictor:
    """Renders of the batch's targets; with `swap_targets`, each target is rendered with the camera of
    the next target of the same scene (compared against the original image)."""
    @torch.no_grad()
    def predict(batch: dict) -> torch.Tensor:
        c2w, k = batch["target_c2w"], batch["target_fxfycxcy"]
        if swap_targets:
            if c2w.shape[1] < 2:
                raise ValueError("pose swap needs at least two targets per scene (data.eval_n_target >= 2)")
            c2w, k = c2w.roll(1, dims=1), k.roll(1, dims=1)
        args = [batch["input_images"], batch["input_c2w"], batch["input_fxfycxcy"], c2w, k]
        with autocast(device, dtype):
            return model(*(a.to(device) for a in args))
    return predict


def evaluate_model(model: torch.nn.Module, split: EvalSplit, device: torch.device, dtype: str,
                   with_ssim: bool = True) -> dict[str, float]:
    was_training = model.training
    model.eval()
    try:
        return score(model_predictor(model, device, dtype), split, with_ssim=with_ssim)
    finally:
        model.train(was_training)


def pose_swap_drop(model: torch.nn.Module, split: EvalSplit, device: torch.device, dtype: str) -> dict[str, float]:
    """PSNR with the right cameras minus PSNR with swapped ones: near zero means the camera is ignored."""
    model.eval()
    right = score(model_predictor(model, device, dtype), split, with_ssim=False)["psnr"]
    swapped = score(model_predictor(model, device, dtype, swap_targets=True), split, with_ssim=False)["psnr"]
    return {"psnr": right, "swapped_psnr": swapped, "pose_swap_drop_db": right - swapped}


# ------------------------------------------------------------------------------ trivial predictors

def _context_mean(batch: dict) -> torch.Tensor:
    m = batch["target_c2w"].shape[1]
    return batch["input_images"].float().mean(1, keepdim=True).expand(-1, m, -1, -1, -1)


def nearest_context(batch: dict) -> torch.Tensor:
    """The context image whose camera centre is closest to the target's."""
    centres_in = batch["input_c2w"][..., :3, 3]    # [b, n, 3]
    centres_out = batch["target_c2w"][..., :3, 3]  # [b, m, 3]
    nearest = torch.cdist(centres_out.double(), centres_in.double()).argmin(-1)  # [b, m]
    images = batch["input_images"].float()
    return torch.stack([images[i, nearest[i]] for i in range(images.shape[0])])


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [..., c, h, w] with reflected borders, radius 3 sigma."""
    radius = max(1, math.ceil(3 * sigma))
    radius = min(radius, images.shape[-1] - 1, images.shape[-2] - 1)
    x = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    shape = images.shape
    flat = images.reshape(-1, 1, *shape[-2:])
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(1, 1, 1, -1))
    flat = F.conv2d(flat, kernel.view(1, 1, -1, 1))
    return flat.reshape(shape)


def trivial_baselines(split: EvalSplit, sigmas: Iterable[float]) -> dict[str, dict[str, float]]:
    """Scores of the context mean, the nearest context view, and the context mean blurred with the
    Gaussian (from `sigmas`) that scores best on this split."""
    results = {"context_mean": score(_context_mean, split, "context_mean"),
               "nearest_context": score(nearest_context, split, "nearest_context")}
    best = None
    for sigma in sigmas:
        blurred = score(lambda b, s=sigma: gaussian_blur(_context_mean(b), s), split, "blurred_mean", with_ssim=False)
        if best is None or blurred["psnr"] > best[1]["psnr"]:
            best = (sigma, blurred)
    if best is not None:
        sigma = best[0]
        results["blurred_mean"] = {**score(lambda b: gaussian_blur(_context_mean(b), sigma), split, "blurred_mean"),
                                   "sigma": sigma}
    return results
