"""Figures written atomically with a non-interactive backend."""
from __future__ import annotations

import io
import math
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


def fixed(value: float, digits: int = 2) -> str:
    """`value` to `digits` decimals, with no negative zero: -0.001 reads 0.00, not -0.00."""
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def legend_outside(ax: "plt.Axes", fontsize: int = 7) -> None:
    """The axes' legend to the right of the plotting area, so it never covers a point or a curve
    (save_figure's tight bounding box keeps it in the file)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


# Where a point's label may go, in points from the point (tried in order): beside it first, then
# further out with a leader line, so that dense clusters still get separate labels.
LABEL_OFFSETS = [(5, 3), (5, -3), (-5, 3), (-5, -3), (0, 7), (0, -7), (12, 10), (12, -10), (-12, 10), (-12, -10)]
LEADER_OFFSETS = [(d * sx, h * sy) for d, h in ((25, 18), (35, 0), (0, 28), (45, 30), (60, 10), (10, 45)) for sx in (1, -1)
                  for sy in (1, -1)]


def label_points(ax: "plt.Axes", xs, ys, labels, fontsize: int = 7, marker_px: float = 5.0) -> None:
    """Each point's label beside it, at the first offset where it overlaps no label already placed and
    no point, and stays inside the axes; crowded labels move further out with a leader line. Call it
    last (after limits, legends and layout are final)."""
    from matplotlib.text import Text
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    points = [ax.transData.transform((x, y)) for x, y in zip(xs, ys)]
    placed = []

    def gap(box, q) -> float:
        return math.hypot(max(box.x0 - q[0], 0.0, q[0] - box.x1), max(box.y0 - q[1], 0.0, q[1] - box.y1))

    def fits(box, own: int, leader: bool) -> bool:
        inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        # A label without a leader line is read as naming the point nearest to it: its own, by a clear margin.
        nearest = leader or all(gap(box, q) > 2 * gap(box, points[own]) for i, q in enumerate(points) if i != own)
        return inside and nearest and not any(box.overlaps(other) for other in placed) and not any(
            box.x0 - marker_px <= qx <= box.x1 + marker_px and box.y0 - marker_px <= qy <= box.y1 + marker_px
            for qx, qy in points)

    for own, (x, y, text) in enumerate(zip(xs, ys, labels)):
        candidates = [(offset, None) for offset in LABEL_OFFSETS] + [
            (offset, {"arrowstyle": "-", "color": "gray", "linewidth": 0.5}) for offset in LEADER_OFFSETS]
        for n, ((dx, dy), arrow) in enumerate(candidates):
            ha = "left" if dx > 0 else "right" if dx < 0 else "center"
            va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
            note = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize, ha=ha, va=va,
                               arrowprops=arrow)
            note.update_positions(renderer)
            box = Text.get_window_extent(note, renderer)  # the text alone, not its leader line
            if fits(box, own, arrow is not None) or n == len(candidates) - 1:
                placed.append(box)
                break
            note.remove()
