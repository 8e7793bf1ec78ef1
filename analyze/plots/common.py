"""Helpers every figure family shares: picking the runs that have a family's data, the x axis
(step or elapsed time), figure layout with fixed margins, log-axis values."""

from __future__ import annotations

import functools
import math
import warnings
from typing import Callable, Iterable, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analyze.run import Run
from .style import DPI, FIGSIZE, MissingDataError, PlotWarning, RC, RUN_COLORS, RUN_STYLES, X_AXES


def as_runs(runs: Run | Sequence[Run]) -> list[Run]:
    if isinstance(runs, Run):
        return [runs]
    runs = list(runs)
    if not runs:
        raise ValueError("no run to plot")
    return runs


def has(frame: pd.DataFrame, column: str) -> bool:
    return column in frame.columns and bool(frame[column].notna().any())


def run_color(i: int) -> str:
    return RUN_COLORS[i % len(RUN_COLORS)]


def run_style(i: int) -> str:
    return RUN_STYLES[i % len(RUN_STYLES)]


def warn_left_out(message: str) -> None:
    warnings.warn(message, PlotWarning, stacklevel=3)


def select(runs: list[Run], family: str, why_missing: Callable[[Run], str | None]) -> list[tuple[int, Run]]:
    """Runs (with their overlay index) that have the family's data; warn about the others."""
    kept, reasons = [], []
    for i, run in enumerate(runs):
        why = why_missing(run)
        if why is None:
            kept.append((i, run))
        else:
            reasons.append(f"{run.name}: {why}")
    if not kept:
        raise MissingDataError(f"{family}: skipped, no data to draw ({'; '.join(reasons)})")
    for reason in reasons:
        warn_left_out(f"{family}: run {reason}; left out of the figure")
    return kept


def time_unit(runs: Iterable[Run]) -> tuple[float, str]:
    """Divisor and label for an elapsed-time axis, chosen from the longest run."""
    longest = max((float(r.steps["elapsed"].max()) for r in runs if has(r.steps, "elapsed")), default=0.0)
    if longest >= 2 * 3600:
        return 3600.0, "elapsed time (h)"
    if longest >= 2 * 60:
        return 60.0, "elapsed time (min)"
    return 1.0, "elapsed time (s)"


def with_x(frame: pd.DataFrame, run: Run, x: str, scale: float) -> pd.DataFrame:
    """`frame` with a float column `_x` (step, or elapsed time from the run's steps frame)."""
    if x == "step":
        return frame.assign(_x=frame["step"].to_numpy(dtype="float64"))
    if frame is run.steps:
        elapsed = frame["elapsed"]
    else:
        by_step = run.steps.drop_duplicates("step").set_index("step")["elapsed"]
        elapsed = frame["step"].map(by_step)
    return frame.assign(_x=elapsed.to_numpy(dtype="float64") / scale)


def check_x(x: str) -> None:
    if x not in X_AXES:
        raise ValueError(f"x must be one of {X_AXES}, got {x!r}")


def no_elapsed(run: Run, x: str) -> str | None:
    if x == "elapsed" and not has(run.steps, "elapsed"):
        return "no elapsed time logged"
    return None


def new_figure(
    nrows: int,
    ncols: int,
    *,
    figsize=FIGSIZE,
    sharex=True,
    sharey=True,
    legend_rows: int = 0,
    right: float = 0.2,
) -> tuple[Figure, np.ndarray]:
    """A figure with fixed margins (inches) for the suptitle, panel titles, labels and a bottom
    legend of `legend_rows` rows. Fixed margins instead of constrained layout: with 8 panels the
    layout engine costs ~5x the drawing itself, and the plot benchmark has 10 s in all."""
    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, sharex=sharex, sharey=sharey, squeeze=False)
    w, h = figsize
    top_in = 0.62                       # suptitle + panel title
    bottom_in = 0.55 + 0.24 * legend_rows + (0.1 if legend_rows else 0)  # tick labels + x label + legend
    left_in = 0.85 if sharey else 0.75  # tick labels + y label
    hspace_in = 0.55 if sharex else 0.85  # panel title (+ tick labels, x label when not shared)
    wspace_in = 0.15 if sharey else 1.0
    panel_h = (h - top_in - bottom_in - hspace_in * (nrows - 1)) / nrows
    panel_w = (w - left_in - right - wspace_in * (ncols - 1)) / ncols
    fig.subplots_adjust(
        left=left_in / w, right=1 - right / w, top=1 - top_in / h, bottom=bottom_in / h,
        hspace=hspace_in / panel_h, wspace=wspace_in / panel_w,
    )
    return fig, axes


def user_axes(ax, n: int, family: str) -> np.ndarray:
    axes = np.atleast_1d(np.asarray(ax, dtype=object)).ravel()
    if len(axes) < n:
        raise ValueError(f"{family}: needs {n} axes, got {len(axes)}")
    return axes[:n]


def clip_line(run: Run) -> float | None:
    """The gradient-clipping threshold of a run: semantics first, then the resolved config."""
    clip = run.semantics.get("grad_norm_clip")
    if clip is None:
        clip = (run.meta.get("config") or {}).get("grad_clip")
    try:
        clip = float(clip)
    except (TypeError, ValueError):
        return None
    return clip if math.isfinite(clip) and clip > 0 else None


def positive(values: pd.Series) -> np.ndarray:
    """Values for a log axis: zeros and negatives become gaps (NaN)."""
    v = values.to_numpy(dtype="float64", na_value=np.nan)
    return np.where(v > 0, v, np.nan)


def all_zero(values: pd.Series) -> bool:
    v = values.dropna()
    return len(v) > 0 and bool((v == 0).all())


def styled(fn):
    """Run a plot function under the house rcParams (fonts >= 9 pt, light grid) only."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(RC):
            return fn(*args, **kwargs)

    return wrapper


def finish(fig: Figure, title: str, handles: list, *, ncols: int | None = None) -> None:
    fig.suptitle(title, y=1 - 0.08 / fig.get_figheight(), va="top")
    if handles:
        fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.0),
                   ncols=ncols or min(len(handles), 4), frameon=False)
