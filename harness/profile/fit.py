"""Growth exponents: the slope of log(cost) against log(N), fitted over the large-N points."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def growth_exponent(ns: Sequence[float], values: Sequence[float], min_n: float = 1) -> float | None:
    """Least-squares slope in log-log over the points with n >= min_n and a positive value; None
    when fewer than two such points exist."""
    pairs = [(float(n), float(v)) for n, v in zip(ns, values)
             if n >= min_n and v is not None and np.isfinite(v) and v > 0]
    if len({n for n, _ in pairs}) < 2:
        return None
    x, y = np.log([n for n, _ in pairs]), np.log([v for _, v in pairs])
    return float(np.polyfit(x, y, 1)[0])
