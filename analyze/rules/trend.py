"""Robust trend of a series: Kendall's tau (is it monotone?) and the Theil-Sen slope (how fast?).

Both rank pairs of points, so one spike or one bad batch cannot make a trend, unlike a slope
through two end points or a least-squares line. Long series are thinned to TREND_MAX_POINTS
evenly spaced points first: the pairwise work is quadratic, and a trend over a phase does not
need every logged step.
"""

from __future__ import annotations

import numpy as np

TREND_MAX_POINTS = 400


def _thin(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(len(y), dtype=float)
    if len(y) > TREND_MAX_POINTS:
        idx = np.linspace(0, len(y) - 1, TREND_MAX_POINTS).round().astype(np.int64)
        return x[idx], y[idx]
    return x, y


def kendall_tau(y: np.ndarray) -> float:
    """Kendall's tau-a of y against its index: +1 rising at every pair, -1 falling, ~0 no trend."""
    x, y = _thin(np.asarray(y, float))
    if len(y) < 2:
        return float("nan")
    i, j = np.triu_indices(len(y), 1)
    return float(np.sign(y[j] - y[i]).sum() / len(i))


def theil_sen_slope(y: np.ndarray) -> float:
    """Median of the pairwise slopes of y against its index (change per point of the input)."""
    x, y = _thin(np.asarray(y, float))
    if len(y) < 2:
        return float("nan")
    i, j = np.triu_indices(len(y), 1)
    return float(np.median((y[j] - y[i]) / (x[j] - x[i])))
