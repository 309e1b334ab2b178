"""The results site: every table, plot and render the harness wrote, as static HTML pages under
results/site/ that open from the file system (no server, nothing loaded from the network).

`python -m harness site` (make site) reads what is recorded (experiment YAMLs and their paper entries,
each results folder's rows.jsonl, manifest.json, tables, figures and headlines, and the registry's
cards) and measures nothing. Pages: index.html (the paper index with status, make target and
headline; the variants with their cards) and one page per experiment, plus one per results folder no
experiment claims. Images are the existing PNGs, linked relatively; the only images the site writes
are per-scene render strips cut from an evaluation's grid figure.
"""
from __future__ import annotations

from pathlib import Path

from .render import write_site

__all__ = ["build_site"]


def build_site(experiments_dir: str | Path = "experiments", results_root: str | Path = "results",
               out: str | Path | None = None) -> Path:
    """Write the site; returns the path of its index.html."""
    results_root = Path(results_root)
    return write_site(Path(experiments_dir), results_root, Path(out) if out else results_root / "site")
