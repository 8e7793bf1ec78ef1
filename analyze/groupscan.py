"""Per-layer questions about long columns, answered from as short a prefix as possible.

"Does every layer log a finite value?" or "is any head load of this layer non-zero?" over a
12.8 M-row head-load column is a full scan when asked with masks and `bincount`, yet on a
healthy run the first few thousand rows settle it. `counts_until` reads growing prefixes
(64 Ki rows, then 4x more each time) and stops as soon as every wanted group has reached its
count; only a run where the answer is "no" for some group pays for the whole column.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

_FIRST_PREFIX = 1 << 16


def counts_until(flags_of: Callable[[slice], np.ndarray], group: np.ndarray, wanted: np.ndarray,
                 target: int = 1) -> np.ndarray:
    """Rows with a true flag per group, counted until each group in `wanted` has `target`.

    flags_of  the flags of the rows in a slice (computed lazily: a prefix never costs the rest);
    group     small non-negative integer group of each row (a layer number);
    wanted    the groups that must reach `target` for the scan to stop early (none: scan it all).
    Returns counts indexed by group (length max(group) + 1); a count below `target` is exact,
    one at or above it is a lower bound.
    """
    n = len(group)
    size = int(group.max()) + 1 if n else 0
    counts = np.zeros(size, np.int64)
    wanted = np.asarray(wanted, np.int64)
    start, width = 0, _FIRST_PREFIX
    while start < n:
        stop = min(n, start + width)
        hit = group[start:stop][flags_of(slice(start, stop))]
        counts += np.bincount(hit.astype(np.intp, copy=False), minlength=size)[:size]
        if len(wanted) and bool((counts[wanted] >= target).all()):
            break
        start, width = stop, width * 4
    return counts
