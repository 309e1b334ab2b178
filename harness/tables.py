"""A DataFrame as a Markdown table (the console's listings); reports render their own tables (`harness.report`)."""
from __future__ import annotations

import pandas as pd
from tabulate import tabulate


def missing_as_none(df: pd.DataFrame) -> pd.DataFrame:
    """NaN -> None: tabulate's missingval only replaces None, so NaN would print as "nan" while the CSV says "n/a"."""
    return df.astype(object).where(df.notna(), None)


def markdown(df: pd.DataFrame, floatfmt: str = ".4g", intfmt: str = "") -> str:
    return tabulate(missing_as_none(df), headers="keys", tablefmt="pipe", showindex=False, floatfmt=floatfmt,
                    intfmt=intfmt, missingval="n/a")
