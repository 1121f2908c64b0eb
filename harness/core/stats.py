"""Statistics for reported numbers. Pure Python: ``reports/`` uses it without torch.

Accuracies are fractions. A single evaluation's uncertainty is the Wilson score interval
over its n examples; an aggregate over seeds is mean +- sample std with a Student-t interval.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

Z95 = 1.959963984540054

# two-sided 95% Student-t quantiles for df = 1..30
_T95 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]


def wilson(k: int, n: int, z: float = Z95) -> Tuple[float, float]:
    """95% Wilson score interval for k successes out of n (well behaved at 0 and n)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the interval always holds p; at k = 0 (k = n) its lower (upper) end is exactly 0 (1), which
    # centre -+ half gives only up to rounding
    lo = 0.0 if k == 0 else min(p, max(0.0, centre - half))
    hi = 1.0 if k == n else max(p, min(1.0, centre + half))
    return (lo, hi)


def proportion(k: int, n: int) -> Dict[str, object]:
    """A fraction with its count and 95% interval: the shape of every stored accuracy."""
    lo, hi = wilson(k, n)
    return {"accuracy": (k / n) if n else None, "correct": int(k), "n": int(n), "ci95": [lo, hi]}


def t95(df: int) -> float:
    """Two-sided 95% Student-t quantile. Above the table, the Cornish-Fisher expansion around the
    normal quantile (error < 1e-4 for df > 30); the normal quantile itself would make every
    interval over more than 30 seeds about 4% too narrow."""
    if df <= 0:
        return float("nan")
    if df <= len(_T95):
        return _T95[df - 1]
    z = Z95
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_std(values: Sequence[float]) -> Dict[str, Optional[float]]:
    """Mean, sample std and a 95% t-interval of the mean over seeds; std is None for one value."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    k = len(vals)
    if k == 0:
        return {"mean": None, "std": None, "n": 0, "ci95": None}
    m = sum(vals) / k
    if k == 1:
        return {"mean": m, "std": None, "n": 1, "ci95": None}
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (k - 1))
    half = t95(k - 1) * sd / math.sqrt(k)
    return {"mean": m, "std": sd, "n": k, "ci95": [m - half, m + half]}


def difference_interval(k1: int, n1: int, k2: int, n2: int) -> Tuple[float, float]:
    """95% interval for p1 - p2 (Newcombe 1998, method 10: the two Wilson intervals combined).
    It assumes independent samples; for two accuracies on the same points (positively
    correlated) it is conservative, i.e. at least as wide as a paired interval would be."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1)
    l2, u2 = wilson(k2, n2)
    d = p1 - p2
    return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def paired_difference(a: List[bool], b: List[bool]) -> Dict[str, int]:
    """Counts of (a and not b) and (b and not a) over the same examples."""
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    return {"only_a": only_a, "only_b": only_b}
