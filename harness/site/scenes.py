"""Per-scene render strips for an evaluation page.

An evaluation writes one grid figure (`grid.png`): a row per scene (its first `grid_scenes` scenes, in
index order), columns the context views, the ground truth and each model's render. Where no per-scene
image was written, the site cuts that figure into one strip per scene: the rows are the bands of
the figure where image panels fill most of the width (the titles and the white margins do not).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..records import write_atomic

# A pixel row belongs to a band of panels when this share of it is not the white figure background.
PANEL_SHARE = 0.3


def panel_bands(image: np.ndarray) -> list[tuple[int, int]]:
    """(top, bottom) pixel rows of each band of image panels, top to bottom."""
    rgb = image[..., :3].astype(np.int16)
    ink = (np.abs(rgb - 255).sum(axis=-1) > 24).mean(axis=1)
    bands, start = [], None
    for y, share in enumerate(ink):
        if share >= PANEL_SHARE and start is None:
            start = y
        elif share < PANEL_SHARE and start is not None:
            bands.append((start, y))
            start = None
    if start is not None:
        bands.append((start, len(ink)))
    tallest = max((b - a for a, b in bands), default=0)
    return [(a, b) for a, b in bands if b - a >= tallest // 2]


def strips_from_grid(grid: Path, scenes: list[str], out_dir: Path) -> dict[str, Path]:
    """One PNG per scene cut from `grid` (whose rows are `scenes`, in order); empty when the bands found
    are not one per scene (a figure of another layout is then shown whole, never cut wrongly)."""
    image = np.asarray(Image.open(grid).convert("RGB"))
    bands = panel_bands(image)
    if len(bands) != len(scenes):
        return {}
    out = {}
    for scene, (top, bottom) in zip(scenes, bands):
        band = image[max(top - 2, 0):min(bottom + 2, image.shape[0])]
        # From the first panel on: the scene's name, set sideways at the left, is in the page's caption.
        columns = (np.abs(band[..., :3].astype(np.int16) - 255).sum(axis=-1) > 24).mean(axis=0)
        first = int(np.argmax(columns >= 0.5)) if (columns >= 0.5).any() else 0
        strip = Image.fromarray(band[:, max(first - 2, 0):])
        path = out_dir / f"{scene}.png"
        buffer = _png_bytes(strip)
        if not path.is_file() or path.read_bytes() != buffer:
            write_atomic(path, buffer)
        out[scene] = path
    return out


def _png_bytes(image: Image.Image) -> bytes:
    import io
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
