"""Statistics behind the plots: DataFrame in, DataFrame out, nothing drawn, nothing mutated.

Kept apart from `analyze.plots` so they can be tested (and reused by reports) without matplotlib.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

DEFAULT_BUCKETS = 400  # a docs-size panel is under 1000 px wide; 2 extremes per bucket


def decimate(
    frame: pd.DataFrame,
    columns: Sequence[str],
    *,
    x: str = "step",
    by: str | Sequence[str] | None = None,
    buckets: int = DEFAULT_BUCKETS,
) -> pd.DataFrame:
    """Thin `frame` for drawing without losing extremes (min/max per bucket, the "M4" scheme).

    The x range of each group (`by`, e.g. "layer") is cut into `buckets` equal-width buckets;
    from each bucket the rows holding the first and last `x` and the minimum and maximum of
    every column in `columns` are kept. The result is a subset of the input rows, in their
    input order, with all columns: every bucket's extremes (so the global minimum and maximum of
    each column) survive, and a group never has more than `buckets * (2 + 2 * len(columns))`
    rows. A group already that small is kept whole. NaN values are never chosen as extremes;
    a row whose columns are all NaN survives only as a bucket's first or last row.
    `frame` is not modified; when nothing needs thinning it is returned as is.
    """
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    columns = [c for c in columns if c in frame.columns]
    if x not in frame.columns:
        raise KeyError(f"decimate: no column {x!r} to bucket on")
    limit = buckets * (2 + 2 * len(columns))
    n = len(frame)
    if n <= limit:
        return frame

    xs = frame[x].to_numpy(dtype="float64")
    group, n_groups = _group_ids(frame, by)

    # Per-group x range -> bucket index in [0, buckets).
    finite_x = np.where(np.isfinite(xs), xs, np.nan)
    lo, hi = np.full(n_groups, np.inf), np.full(n_groups, -np.inf)
    np.fmin.at(lo, group, finite_x)  # fmin/fmax skip NaN
    np.fmax.at(hi, group, finite_x)
    width = (hi - lo) / buckets
    width = np.where(width > 0, width, 1.0)
    rel = (finite_x - lo[group]) / width[group]
    bucket = np.clip(np.nan_to_num(rel, nan=0.0), 0, buckets - 1).astype(np.int64)
    key = group * buckets + bucket

    # Small groups are kept whole: only thin the rows of groups above the limit.
    sizes = np.bincount(group, minlength=n_groups)
    keep = sizes[group] <= limit

    # Rows grouped by bucket key (stable: input order within a bucket), then for each column the
    # first row holding each bucket's minimum and maximum: numpy segment reductions, no groupby.
    if np.all(key[1:] >= key[:-1]):  # one group in x order (a layer's or the steps' series): no sort
        order, sorted_key = None, key
    else:
        order = np.argsort(_narrow(key), kind="stable")  # radix sort when the keys fit 16 bits
        sorted_key = key[order]
    new_seg = sorted_key[1:] != sorted_key[:-1]
    starts = np.flatnonzero(np.r_[True, new_seg])
    seg = np.cumsum(np.r_[False, new_seg])  # segment id of each sorted row
    for values in [finite_x] + [frame[c].to_numpy(dtype="float64", na_value=np.nan) for c in columns]:
        v = values if order is None else values[order]
        nan = np.isnan(v)
        any_nan = nan.any()
        if any_nan and nan.all():
            continue
        for fill, reduce in ((np.inf, np.minimum), (-np.inf, np.maximum)):
            w = np.where(nan, fill, v) if any_nan else v
            at_ext = w == reduce.reduceat(w, starts)[seg]
            hit = np.flatnonzero(at_ext & ~nan if any_nan else at_ext)  # NaN is never an extreme
            first = hit[np.r_[True, seg[hit][1:] != seg[hit][:-1]]]
            keep[first if order is None else order[first]] = True
    return frame.iloc[np.flatnonzero(keep)]


def _group_ids(frame: pd.DataFrame, by: str | Sequence[str] | None) -> tuple[np.ndarray, int]:
    """Group number of each row (0..n_groups-1; a number may be unused) and the number of groups."""
    n = len(frame)
    if by is None:
        return np.zeros(n, dtype=np.int64), 1
    col = frame[by] if isinstance(by, str) else None
    if col is not None and col.dtype.kind in "iu" and n:
        v = col.to_numpy()
        first, last = int(v.min()), int(v.max())
        if last - first < 1 << 16:  # a small integer range (layer numbers): the value is the group
            return v.astype(np.int64) - first, last - first + 1
    group = frame.groupby(by, sort=False, dropna=False).ngroup().to_numpy(dtype=np.int64)
    return group, int(group.max()) + 1 if n else 0


def _narrow(key: np.ndarray) -> np.ndarray:
    """`key` (non-negative) in the smallest unsigned type that holds it: numpy's stable sort is a
    radix sort for 16-bit keys, several times faster than its merge sort of int64 on 1.6M rows."""
    top = int(key.max()) if len(key) else 0
    for t in (np.uint16, np.uint32):
        if top <= np.iinfo(t).max:
            return key.astype(t)
    return key


def phase_boundaries(steps: pd.DataFrame, *, x: str = "step") -> pd.DataFrame:
    """Where the training phase changes: one row per change with `x`, `phase` (the new phase)."""
    if "phase" not in steps.columns or x not in steps.columns or steps.empty:
        return pd.DataFrame({x: pd.Series(dtype="float64"), "phase": pd.Series(dtype="object")})
    s = steps[[x, "phase"]].dropna(subset=["phase"])
    changed = s["phase"].ne(s["phase"].shift())
    changed.iloc[:1] = False  # the first phase is where the run starts, not a boundary
    return s[changed].reset_index(drop=True)


def head_load_matrix(head_load: pd.DataFrame, *, window: str | float = "last") -> pd.DataFrame:
    """Mean load per (layer, head) as a layer x head matrix (index: layer, columns: head).

    `window`: "all" averages over the whole run; "last" over the last 10% of the logged step
    range; a float in (0, 1] over that fraction of the range.
    """
    if head_load.empty or "load" not in head_load.columns:
        return pd.DataFrame()
    frame = head_load
    if window != "all":
        frac = 0.1 if window == "last" else float(window)
        if not 0 < frac <= 1:
            raise ValueError(f"window must be 'all', 'last' or a fraction in (0, 1], got {window!r}")
        first, last = frame["step"].min(), frame["step"].max()
        start = last - frac * (last - first)
        frame = frame[frame["step"] >= start]
    matrix = frame.groupby(["layer", "head"])["load"].mean().unstack("head")
    return matrix.sort_index().sort_index(axis=1)


def window_steps(head_load: pd.DataFrame, *, window: str | float = "last") -> tuple[float, float]:
    """The (first, last) step that `head_load_matrix` averages over with the same `window`."""
    first, last = float(head_load["step"].min()), float(head_load["step"].max())
    if window == "all":
        return first, last
    frac = 0.1 if window == "last" else float(window)
    start = last - frac * (last - first)
    steps = head_load["step"]
    return float(steps[steps >= start].min()), last


def bucket_mean(
    frame: pd.DataFrame,
    columns: Sequence[str],
    *,
    x: str = "step",
    buckets: int = 100,
) -> pd.DataFrame:
    """Trend of noisy series: the mean of `x` and of each column over `buckets` equal-width
    x buckets (NaN ignored; non-finite values too, so one inf does not blank a bucket).
    One row per non-empty bucket, sorted by `x`; `frame` is not modified."""
    columns = [c for c in columns if c in frame.columns]
    if frame.empty:
        return pd.DataFrame(columns=[x, *columns], dtype="float64")
    xs = frame[x].to_numpy(dtype="float64")
    lo, hi = np.nanmin(xs), np.nanmax(xs)
    width = (hi - lo) / buckets if hi > lo else 1.0
    bucket = np.clip(np.nan_to_num((xs - lo) / width, nan=0.0), 0, buckets - 1).astype(np.int64)
    data = {x: xs}
    for c in columns:
        v = frame[c].to_numpy(dtype="float64", na_value=np.nan)
        data[c] = np.where(np.isfinite(v), v, np.nan)
    out = pd.DataFrame(data).groupby(bucket, sort=True).mean()
    return out.reset_index(drop=True)
