"""Helpers every figure family shares: picking the runs that have a family's data, the x axis
(step or elapsed time), figure layout with fixed margins, log-axis values."""

from __future__ import annotations

import functools
import textwrap
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


def shared_unit(runs: Iterable[Run]) -> str:
    """The routing unit the figure's words use: "expert" when every run routes experts, else
    "head" (engine and reference logs, or a mix)."""
    units = {r.unit for r in runs}
    return units.pop() if len(units) == 1 else "head"


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


TITLE_MIN_SIZE = 7.0   # pt: a suptitle shrinks down to this, then breaks before the run name


def fit_title(fig: Figure, text) -> None:
    """Keep a (suptitle) text inside the figure: a long run name would otherwise be cut at both
    edges. Smaller font first (down to TITLE_MIN_SIZE), then lines broken at spaces."""
    renderer = fig.canvas.get_renderer()
    room = fig.bbox.width * 0.98
    size = text.get_fontsize()
    while text.get_window_extent(renderer).width > room and size > TITLE_MIN_SIZE:
        size = max(TITLE_MIN_SIZE, size - 1)
        text.set_fontsize(size)
    width = text.get_window_extent(renderer).width
    if width > room:  # wrap at spaces only (a run name is never split), as many lines as needed
        title = text.get_text()
        chars = max(20, int(len(title) * room / width))
        text.set_text(textwrap.fill(title, chars, break_long_words=False, break_on_hyphens=False))


def finish(fig: Figure, title: str, handles: list, *, ncols: int | None = None) -> None:
    fit_title(fig, fig.suptitle(title, y=1 - 0.08 / fig.get_figheight(), va="top"))
    if handles:
        fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.0),
                   ncols=ncols or min(len(handles), 4), frameon=False)


# ---- x axis: epochs for imported logs, phase boundaries, gaps -------------------------------------

GAP_FACTOR = 5.0   # a jump in x over GAP_FACTOR x the median spacing is missing data: the line breaks


def counts_epochs(runs: Iterable[Run]) -> bool:
    """True when every run's "step" is an epoch index (imported reference-trainer logs)."""
    runs = list(runs)
    return bool(runs) and all(r.meta.get("source") == "rustgpt"
                              or "epoch" in str(r.semantics.get("step", "")) for r in runs)


def step_label(runs: Iterable[Run]) -> str:
    return "epoch" if counts_epochs(runs) else "step"


def format_step_axis(a, runs: Iterable[Run], nbins: int | None = None) -> None:
    """Steps in engineering notation (1k, 20k); epochs as whole numbers (no 2.5th epoch)."""
    epochs = counts_epochs(runs)
    a.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter(sep=""))
    if epochs or nbins is not None:
        a.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins or "auto", integer=epochs))


def break_gaps(x, *ys) -> tuple[np.ndarray, ...]:
    """`x` and each of `ys` with a NaN point inserted in every gap wider than GAP_FACTOR x the
    median spacing, so lines stop at missing data instead of bridging it."""
    x = np.asarray(x, dtype="float64")
    ys = [np.asarray(y, dtype="float64") for y in ys]
    if len(x) < 3:
        return (x, *ys)
    dx = np.diff(x)
    med = float(np.median(dx[dx > 0])) if np.any(dx > 0) else 0.0
    gaps = np.flatnonzero(dx > GAP_FACTOR * med) + 1 if med > 0 else np.zeros(0, dtype=np.int64)
    if not len(gaps):
        return (x, *ys)
    mid = (x[gaps - 1] + x[gaps]) / 2
    return (np.insert(x, gaps, mid), *(np.insert(y, gaps, np.nan) for y in ys))


PHASE_COLOR = "0.35"


def phase_xs(runs: Iterable[tuple[int, Run]], x: str, scale: float) -> dict[float, str]:
    """x position -> phase name of every phase start after the first, over the kept runs."""
    from analyze.decimate import phase_boundaries

    out: dict[float, str] = {}
    for _, run in runs:
        s = run.steps
        if "phase" not in s.columns:
            continue
        frame = with_x(s[["step", "phase", *(["elapsed"] if x == "elapsed" else [])]], run, x, scale)
        for _, row in phase_boundaries(frame, x="_x").iterrows():
            out.setdefault(float(row["_x"]), str(row["phase"]))
    return out


def mark_phases(axes, boundaries: dict[float, str], *, label_on=None) -> None:
    """A dotted line at each phase start on every axes; the phase named on `label_on` (default all)."""
    for a in axes:
        for bx, phase in sorted(boundaries.items()):
            a.axvline(bx, color=PHASE_COLOR, linestyle=":", linewidth=1.3)
            if label_on is None or a in label_on:
                a.annotate(phase, xy=(bx, 0.99), xycoords=("data", "axes fraction"), xytext=(3, 0),
                           textcoords="offset points", va="top", ha="left", fontsize=9, color="0.25",
                           bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 1})
