"""Plain-JSON conversion shared by findings evidence and the JSON report."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def json_safe(v: Any, *, digits: int | None = None) -> Any:
    """`v` with only plain JSON types: numpy scalars and arrays unwrapped, non-finite floats as
    null (so `json.loads` accepts the output), unknown objects as their `str`. With `digits`,
    floats are rounded to that many significant digits (findings evidence stays readable)."""
    if isinstance(v, dict):
        return {str(k): json_safe(x, digits=digits) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray, pd.Series, pd.Index)):
        return [json_safe(x, digits=digits) for x in list(v)]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if not math.isfinite(f):
            return None
        return float(f"{f:.{digits}g}") if digits else f
    if v is None or isinstance(v, str):
        return v
    return str(v)
