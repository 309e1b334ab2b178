"""Image-quality metrics under the community protocol (pixelSplat / MVSplat / LVSM evaluation code):
PSNR on images clamped to [0,1], SSIM through scikit-image with the protocol's settings, LPIPS
through the `lpips` package with `normalize=True`; each per image, then mean over a scene's targets,
then mean over scenes."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from skimage.metrics import structural_similarity

METRICS = ("psnr", "ssim", "lpips")
# The protocol's SSIM settings (pixelSplat's `compute_ssim`, reused by MVSplat and LVSM).
SSIM_SETTINGS = {"win_size": 11, "gaussian_weights": True, "channel_axis": 0, "data_range": 1.0}
LPIPS_NETS = ("vgg", "alex")


class LPIPSUnavailableWarning(UserWarning):
    """The LPIPS backbone weights are missing: LPIPS is reported as n/a."""


def _pairs(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
        raise ValueError(f"metrics: expected two [n,3,h,w] tensors of one shape, got {list(pred.shape)} and {list(target.shape)}")
    return pred.detach().clamp(0, 1), target.detach().clamp(0, 1)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR [n] in dB of [n,3,h,w] images, both clamped to [0,1]; computed in float64."""
    pred, target = _pairs(pred, target)
    mse = (pred.double() - target.double()).square().flatten(1).mean(1)
    return -10.0 * torch.log10(mse)


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM [n], scikit-image on CPU with the protocol's settings (float32 inputs, as the
    protocol passes them)."""
    pred, target = _pairs(pred, target)
    pred_np = pred.float().cpu().numpy()
    target_np = target.float().cpu().numpy()
    values = [structural_similarity(t, p, **SSIM_SETTINGS) for p, t in zip(pred_np, target_np)]
    return torch.tensor(values, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------- LPIPS

# The torchvision weights `lpips` asks for (VGG16_Weights / AlexNet_Weights .IMAGENET1K_V1); spelled out
# so that finding out LPIPS is unavailable does not import torchvision (seconds). A test checks them.
BACKBONE_URLS = {
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
}


def backbone_filename(net: str) -> str:
    """The file torchvision would download for `lpips.LPIPS(net=net)` (e.g. `vgg16-397923af.pth`)."""
    if net not in LPIPS_NETS:
        raise ValueError(f"lpips net: unknown value {net!r}; allowed: {list(LPIPS_NETS)}")
    return Path(BACKBONE_URLS[net]).name


def backbone_cache_path(net: str) -> Path:
    """Where torchvision looks for the backbone: `$TORCH_HOME/hub/checkpoints/<file>`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / backbone_filename(net)


def missing_backbone_message(net: str, path: Path) -> str:
    url = BACKBONE_URLS[net]
    return (f"LPIPS ({net}) reported as n/a: backbone weights {path.name} not found at {path}. "
            f"Download {url} and put it at {backbone_cache_path(net)} (set TORCH_HOME to choose the cache) "
            f"or pass its path as the LPIPS backbone option.")


_WARNED: set[str] = set()


def _backbone_state(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("features.")}


def _load_backbone(net_module: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """`lpips` slices torchvision's `features` into `slice1..5` keeping the layer indices, so
    `sliceK.<i>.weight` is torchvision's `features.<i>.weight`."""
    wanted = {key: "features." + key.split(".", 1)[1] for key in net_module.state_dict()}
    missing = [source for source in wanted.values() if source not in state]
    if missing:
        raise KeyError(f"{path}: not a torchvision backbone for LPIPS; missing {missing[:3]}")
    mismatched = [f"{s}: {list(state[s].shape)}" for k, s in wanted.items() if state[s].shape != net_module.state_dict()[k].shape]
    if mismatched:
        raise KeyError(f"{path}: backbone shapes do not fit: {mismatched[:3]}")
    net_module.load_state_dict({k: state[s] for k, s in wanted.items()}, strict=True)


def _build_lpips(net: str) -> torch.nn.Module:
    import lpips
    with warnings.catch_warnings():
        # torchvision's deprecation notice for the `pretrained=` argument lpips still passes.
        warnings.simplefilter("ignore", UserWarning)
        # pnet_rand=True builds the backbone without asking torchvision for weights (no download
        # attempt); the real backbone is then loaded from the file found beforehand. The linear
        # layers come from the weights shipped inside the lpips package.
        return lpips.LPIPS(net=net, pnet_rand=True, verbose=False)


@dataclass
class LPIPSMetric:
    """LPIPS on a device, or `available=False` with `message` saying which file is missing.

    `random_backbone=True` keeps the random backbone: for shape tests only, never reported numbers.
    """
    net: str = "vgg"
    device: torch.device | str = "cpu"
    backbone: str | Path | None = None
    batch_size: int = 32
    random_backbone: bool = False
    available: bool = field(init=False, default=False)
    message: str = field(init=False, default="")
    backbone_path: Path | None = field(init=False, default=None)
    _model: Any = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        filename = backbone_filename(self.net)
        path = Path(self.backbone).expanduser() if self.backbone else backbone_cache_path(self.net)
        if path.is_dir():
            path = path / filename
        self.backbone_path = path
        model = None
        if self.random_backbone:
            model = _build_lpips(self.net)
            self.message = f"LPIPS ({self.net}) with a RANDOM backbone: not LPIPS, for shape checks only"
        elif path.is_file():
            model = _build_lpips(self.net)
            _load_backbone(model.net, _backbone_state(path), path)
            self.message = f"LPIPS ({self.net}, normalize=True), backbone {path}"
        else:
            self.message = missing_backbone_message(self.net, path)
            if self.message not in _WARNED:
                _WARNED.add(self.message)
                warnings.warn(self.message, LPIPSUnavailableWarning, stacklevel=3)
        if model is not None:
            self._model = model.to(self.device).eval().requires_grad_(False)
            self.available = True

    @property
    def network(self) -> Any:
        """The frozen, differentiable `lpips.LPIPS` module (None when unavailable), for use as a loss."""
        return self._model

    @property
    def label(self) -> str:
        if not self.available:
            return "n/a"
        return f"{self.net}-random-backbone" if self.random_backbone else self.net

    @torch.no_grad()
    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        """Per-image LPIPS [n] (float64 on CPU), or None when unavailable."""
        if not self.available:
            return None
        pred, target = _pairs(pred, target)
        out = []
        for start in range(0, pred.shape[0], self.batch_size):
            p = pred[start:start + self.batch_size].to(self.device, torch.float32)
            t = target[start:start + self.batch_size].to(self.device, torch.float32)
            out.append(self._model(t, p, normalize=True).flatten().double().cpu())
        return torch.cat(out)


def image_metrics(pred: torch.Tensor, target: torch.Tensor, lpips_metric: LPIPSMetric | None) -> list[dict[str, float | None]]:
    """One dict {psnr, ssim, lpips} per image pair; lpips is None where unavailable."""
    values = {"psnr": psnr(pred, target), "ssim": ssim(pred, target)}
    perceptual = lpips_metric(pred, target) if lpips_metric is not None else None
    rows = []
    for i in range(pred.shape[0]):
        rows.append({
            "psnr": float(values["psnr"][i]),
            "ssim": float(values["ssim"][i]),
            "lpips": None if perceptual is None else float(perceptual[i]),
        })
    return rows


# ---------------------------------------------------------------------------------------- aggregation

def none_if_nan(value: Any) -> Any:
    """A number as a row records it: NaN (a metric not computed) as None."""
    return None if value is None or (isinstance(value, float) and value != value) else float(value)


def _mean(values: Iterable[Any]) -> float | None:
    """Mean of the present values; None (n/a) if any is missing, so a partial column never masquerades
    as a complete one."""
    values = list(values)
    if not values or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        return None
    return float(np.mean(np.asarray(values, dtype=np.float64)))


def scene_means(view_rows: Sequence[Mapping[str, Any]], by: Sequence[str] = ("model",)) -> pd.DataFrame:
    """Mean over each scene's target views: one row per (by..., scene) with `targets` counted."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in view_rows:
        groups.setdefault(tuple(row[k] for k in (*by, "scene")), []).append(row)
    out = []
    for key, rows in groups.items():
        entry = dict(zip((*by, "scene"), key))
        entry.update({m: _mean(r.get(m) for r in rows) for m in METRICS})
        entry["targets"] = len(rows)
        out.append(entry)
    return pd.DataFrame(out, columns=[*by, "scene", *METRICS, "targets"])


def mean_over_scenes(scene_rows: Sequence[Mapping[str, Any]] | pd.DataFrame, by: Sequence[str] = ("model",)) -> pd.DataFrame:
    """The reported number: the mean over scenes of the per-scene means (every scene weighs the same,
    whatever its number of targets)."""
    records = scene_rows.to_dict("records") if isinstance(scene_rows, pd.DataFrame) else list(scene_rows)
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in records:
        groups.setdefault(tuple(row[k] for k in by), []).append(row)
    out = []
    for key, rows in groups.items():
        entry = dict(zip(by, key))
        entry.update({m: _mean(r.get(m) for r in rows) for m in METRICS})
        entry["scenes"] = len(rows)
        out.append(entry)
    return pd.DataFrame(out, columns=[*by, *METRICS, "scenes"])
