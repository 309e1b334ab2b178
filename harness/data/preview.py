"""A PNG grid of a few synthetic scenes: one row per scene, its views left to right."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .registry import open_source


def _tile(images: torch.Tensor) -> np.ndarray:
    """[v,3,S,S] in [0,1] -> one uint8 row [S, v*(S+2), 3] with 2-pixel white gaps."""
    v, _, s, _ = images.shape
    row = np.full((s, v * (s + 2), 3), 255, dtype=np.uint8)
    for k, image in enumerate(images):
        row[:, k * (s + 2):k * (s + 2) + s] = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
    return row


def preview_grid(sources: tuple[str, ...] = ("synthetic_object", "synthetic_scene"), scenes: int = 3, views: int = 8,
                 image_size: int = 96, seed: int = 0) -> Image.Image:
    """Rows of `views` evenly spaced views for the first `scenes` scenes of each source, labelled."""
    rows, labels = [], []
    for name in sources:
        src = open_source(name, count=scenes, seed=seed, image_size=image_size)
        for i in range(scenes):
            n = src.num_views(i)
            picks = np.linspace(0, n - 1, views).round().astype(int).tolist()
            rows.append(_tile(src.views(i, picks).images))
            labels.append(f"{src.names[i]}  views {picks}")
    label_h = 14
    width = rows[0].shape[1]
    canvas = Image.new("RGB", (width, sum(r.shape[0] + label_h for r in rows)), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for row, label in zip(rows, labels):
        draw.text((2, y + 1), label, fill=(0, 0, 0))
        canvas.paste(Image.fromarray(row), (0, y + label_h))
        y += row.shape[0] + label_h
    return canvas


def write_preview(path: str | Path, **options) -> Path:
    from ..records import write_atomic
    buffer = io.BytesIO()
    preview_grid(**options).save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())
    return Path(path)
