"""Figures written atomically with a non-interactive backend."""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .records import write_atomic  # noqa: E402


def save_figure(fig: "plt.Figure", path: str | Path, dpi: int = 130) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
    return Path(path)
