"""Intervals for the shares the evaluations report (accepted answers, passed tests)."""

from __future__ import annotations

import math


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a share ``successes / n`` (95 % for ``z`` = 1.96): unlike
    the normal approximation it stays inside [0, 1] and is honest at 0 or n successes."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
