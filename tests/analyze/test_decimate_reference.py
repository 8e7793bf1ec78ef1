"""analyze.decimate.decimate keeps exactly the rows a plain pandas groupby idxmin/idxmax keeps
(its numpy segment reductions replaced that groupby for speed on 1.6M-row layer frames)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analyze.decimate import decimate


def _reference(frame, columns, by, buckets):
    xs = frame["step"].to_numpy(dtype="float64")
    group = (np.zeros(len(frame), np.int64) if by is None
             else frame.groupby(by, sort=False).ngroup().to_numpy(np.int64))
    keep = np.zeros(len(frame), bool)
    for g in np.unique(group):
        rows = np.flatnonzero(group == g)
        x = xs[rows]
        width = (x.max() - x.min()) / buckets
        width = width if width > 0 else 1.0
        bucket = np.clip((x - x.min()) / width, 0, buckets - 1).astype(np.int64)
        if len(rows) <= buckets * (2 + 2 * len(columns)):
            keep[rows] = True
            continue
        for values in [x] + [frame[c].to_numpy("float64")[rows] for c in columns]:
            s = pd.Series(values, index=rows)
            ok = s.notna()
            if ok.any():
                grouped = s[ok].groupby(bucket[ok.to_numpy()])
                keep[grouped.idxmin().to_numpy()] = True
                keep[grouped.idxmax().to_numpy()] = True
    return frame.iloc[np.flatnonzero(keep)]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("by", [None, "layer"])
def test_decimate_matches_groupby_reference(seed, by):
    rng = np.random.default_rng(seed)
    n, n_layers = int(rng.integers(2000, 9000)), int(rng.integers(1, 4))
    frame = pd.DataFrame({
        "step": np.repeat(np.arange(n // n_layers + 1), n_layers)[:n],
        "layer": np.tile(np.arange(n_layers), n // n_layers + 1)[:n],
        "a": rng.normal(size=n).round(1),  # many ties: the first row of a tie must win
        "b": rng.normal(size=n),
    })
    frame.loc[rng.random(n) < 0.1, "a"] = np.nan
    frame.loc[rng.random(n) < 0.01, "b"] = np.inf
    if seed == 0:
        frame["b"] = np.nan
    buckets = int(rng.integers(5, 60))
    out = decimate(frame, ["a", "b"], by=by, buckets=buckets)
    assert out.index.equals(_reference(frame, ["a", "b"], by, buckets).index)
