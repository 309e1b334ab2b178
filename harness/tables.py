"""Tables as Markdown, CSV and LaTeX from one DataFrame, each headed by where its numbers came from."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd
from tabulate import tabulate

from .records import write_atomic


def missing_as_none(df: pd.DataFrame) -> pd.DataFrame:
    """NaN -> None: tabulate's missingval only replaces None, so NaN would print as "nan" while the CSV says "n/a"."""
    return df.astype(object).where(df.notna(), None)


def markdown(df: pd.DataFrame, floatfmt: str = ".4g", intfmt: str = "") -> str:
    return tabulate(missing_as_none(df), headers="keys", tablefmt="pipe", showindex=False, floatfmt=floatfmt,
                    intfmt=intfmt, missingval="n/a")


def write_tables(df: pd.DataFrame, out_dir: str | Path, stem: str, title: str, notes: Iterable[str] = (),
                 floatfmt: str = ".4g") -> dict[str, Path]:
    """Write `<stem>.md`, `<stem>.csv` and `<stem>.tex`; `notes` state provenance (device, dtype,
    preset, dataset, commit; or paper and table)."""
    out_dir = Path(out_dir)
    notes = list(notes)
    md = f"# {title}\n\n" + "".join(f"- {n}\n" for n in notes) + ("\n" if notes else "") + markdown(df, floatfmt) + "\n"
    body = tabulate(missing_as_none(df), headers="keys", tablefmt="latex_booktabs", showindex=False, floatfmt=floatfmt, missingval="n/a")
    tex = "".join(f"% {n}\n" for n in [title, *notes]) + body + "\n"
    paths = {"md": out_dir / f"{stem}.md", "csv": out_dir / f"{stem}.csv", "tex": out_dir / f"{stem}.tex"}
    write_atomic(paths["md"], md)
    write_atomic(paths["csv"], df.to_csv(index=False, na_rep="n/a"))
    write_atomic(paths["tex"], tex)
    return paths
