"""Tables and log-log plots built from recorded rows (never from in-memory state)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from ..plots import plt, save_figure
from .fit import growth_exponent

# Display names and a fixed colour per variant, so every figure reads the same.
LABELS = {"lvsm_decoder_only": "LVSM decoder-only", "lvsm_encoder_decoder": "LVSM encoder-decoder",
          "efficient_lvsm": "Efficient-LVSM"}
AXIS_NAMES = {"n_input": "N input views", "n_cached": "N cached input views", "n_target": "M target views"}
COLORS = {"lvsm_decoder_only": "tab:red", "lvsm_encoder_decoder": "tab:orange", "efficient_lvsm": "tab:blue"}


def published_notes(published) -> list[str]:
    """One note per published row, `key=value` pairs, and where they come from."""
    if published is None:
        return []
    rows = "; ".join(", ".join(f"{k}={v}" for k, v in row.items()) for row in published.rows)
    return [f"published: {rows} (source: {published.source.strip()})"]


def blank_missing(frame: pd.DataFrame) -> pd.DataFrame:
    """NaN -> None, which the table writers print as n/a."""
    return frame.astype(object).where(frame.notna(), None)


def ok_frame(rows: Sequence[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        return frame
    return frame[frame["status"] == "ok"].copy()


def failures(rows: Sequence[dict], columns: Sequence[str]) -> list[str]:
    """One note per failed point, so a table never silently drops one."""
    return [f"not measured ({r['status']}): " + ", ".join(f"{c}={r.get(c)}" for c in columns) + f": {r.get('error')}"
            for r in rows if r.get("status") != "ok"]


def exponents(frame: pd.DataFrame, x: str, metrics: dict[str, str], by: Sequence[str], min_n: int) -> pd.DataFrame:
    """One row per group, one column per metric: the fitted log-log slope over x >= min_n."""
    out = []
    if frame.empty:
        return pd.DataFrame(out)
    for keys, group in frame.groupby(list(by), sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        group = group.sort_values(x)
        row = dict(zip(by, keys))
        for column, title in metrics.items():
            if column in group:
                row[title] = growth_exponent(group[x], pd.to_numeric(group[column], errors="coerce"), min_n)
        out.append(row)
    return pd.DataFrame(out)


def loglog(frame: pd.DataFrame, path: str | Path, x: str, metrics: dict[str, str], facet: str | None,
           series: str, min_n: int, title: str, extra: dict[str, pd.DataFrame] | None = None) -> Path | None:
    """A grid of log-log axes: one row per metric, one column per `facet` value; one line per
    `series` value, its fitted exponent (x >= min_n) in the legend. `extra` adds dashed reference
    lines (label -> frame with x and the metric columns), e.g. published numbers."""
    if frame.empty:
        return None
    facets = sorted(frame[facet].unique()) if facet else [None]
    fig, axes = plt.subplots(len(metrics), len(facets), figsize=(4.6 * len(facets), 3.4 * len(metrics)),
                             squeeze=False, layout="constrained")
    for r, (column, ylabel) in enumerate(metrics.items()):
        for c, value in enumerate(facets):
            ax = axes[r][c]
            part = frame if facet is None else frame[frame[facet] == value]
            for name, group in part.groupby(series, sort=False):
                group = group.sort_values(x)
                y = pd.to_numeric(group[column], errors="coerce")
                if not (y > 0).any():
                    continue
                slope = growth_exponent(group[x], y, min_n)
                legend = f"{LABELS.get(name, name)} (slope {slope:.2f})" if slope is not None else LABELS.get(name, name)
                ax.plot(group[x], y, marker="o", color=COLORS.get(name), label=legend)
            for label, ref in (extra or {}).items():
                if column in ref:
                    ref_slope = growth_exponent(ref[x], ref[column], min_n)
                    ax.plot(ref[x], ref[column], linestyle="--", marker="x", color="gray",
                            label=f"{label} (slope {ref_slope:.2f})" if ref_slope is not None else label)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(AXIS_NAMES.get(x, x))
            ax.set_ylabel(ylabel)
            if facet:
                ax.set_title(f"{AXIS_NAMES.get(facet, facet)} = {value}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"{title}\n(slopes fitted over N >= {min_n})")
    return save_figure(fig, path)


def ratio_table(frame: pd.DataFrame, numerator: str, denominator: str, keys: Sequence[str],
                metrics: dict[str, str]) -> pd.DataFrame:
    """numerator-model / denominator-model for each metric, matched on `keys` (e.g. N and M)."""
    if frame.empty or not {numerator, denominator} <= set(frame["model"]):
        return pd.DataFrame()
    a = frame[frame["model"] == numerator].set_index(list(keys))
    b = frame[frame["model"] == denominator].set_index(list(keys))
    joined = a.index.intersection(b.index)
    out = pd.DataFrame(index=joined)
    for column, title in metrics.items():
        out[title] = pd.to_numeric(a.loc[joined, column]) / pd.to_numeric(b.loc[joined, column])
    return out.reset_index().sort_values(list(keys))
