"""Figures of a run (or several overlaid): one `plot_<family>(runs, ax=None)` per figure family.

Each plot function takes one `Run` or a sequence of them, draws, and returns the axes it drew
on (a flat numpy array). It never saves and never mutates a run; `write_figures` saves.
Statistics (decimation, phase boundaries, head-load matrix) live in `analyze.decimate`.

Figures are built on `matplotlib.figure.Figure` with an explicit Agg canvas rather than through
pyplot: no global backend switch at import, no pyplot figure registry to leak from, safe in a
long-lived process. Nothing needs `plt.close`.

Missing data: a run that lacks the data of a family (a dense run has no thresholds, an imported
log has no head load) is left out of that figure with a `PlotWarning`; when no run has the data
the function raises `MissingDataError` and `write_figures` skips the figure with a warning.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import multiprocessing
import os
import tempfile
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from analyze.atomic import OutputError, file_mode, make_dirs, remove_dirs
from analyze.decimate import DEFAULT_BUCKETS, bucket_mean, decimate, head_load_matrix, phase_boundaries, window_steps
from analyze.run import Run, layer_block
from moh import schema

# Targets drawn as bands/lines; they mirror the default success criteria of issue 3.
THRESHOLD_TARGET = (0.3, 0.8)
COMPLEXITY_TARGET = (0.0, 1.0)
HEADS_TARGET = (3.0, 4.0)
GRAD_NORM_TARGET = 2.5
LOSS_TARGET = 0.40

FIGSIZE = (8.0, 4.5)  # inches: docs size
# Decimation buckets ~ pixel columns of a panel at docs size (one of 4 panels per row is ~195 px
# wide, one of 2 ~400 px): min/max per pixel column draws the same envelope as every point.
LAYER_BUCKETS = 200
DPI = 120
FORMATS = ("png", "svg")
X_AXES = ("step", "elapsed")

# >= 9 pt everywhere at docs size.
RC = {
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "figure.titlesize": 12,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    # Text from logs (run names, layer labels, phases) is shown literally: a '$' in a run name
    # must not be parsed as mathtext (an unbalanced one made savefig raise).
    "text.parse_math": False,
}
RUN_COLORS = ("tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
RUN_STYLES = ("-", "--", ":", "-.")
TARGET_COLOR = "tab:green"
LIMIT_COLOR = "tab:red"


class MissingDataError(ValueError):
    """No run given to a plot function carries the data that figure needs."""


class PlotWarning(UserWarning):
    """A run (or a whole figure) was left out because its data is missing."""


# ---- helpers ---------------------------------------------------------------------------------


def _as_runs(runs: Run | Sequence[Run]) -> list[Run]:
    if isinstance(runs, Run):
        return [runs]
    runs = list(runs)
    if not runs:
        raise ValueError("no run to plot")
    return runs


def _has(frame: pd.DataFrame, column: str) -> bool:
    return column in frame.columns and bool(frame[column].notna().any())


def _run_color(i: int) -> str:
    return RUN_COLORS[i % len(RUN_COLORS)]


def _run_style(i: int) -> str:
    return RUN_STYLES[i % len(RUN_STYLES)]


def _warn(message: str) -> None:
    warnings.warn(message, PlotWarning, stacklevel=3)


def _select(runs: list[Run], family: str, why_missing: Callable[[Run], str | None]) -> list[tuple[int, Run]]:
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
        _warn(f"{family}: run {reason}; left out of the figure")
    return kept


def _time_unit(runs: Iterable[Run]) -> tuple[float, str]:
    """Divisor and label for an elapsed-time axis, chosen from the longest run."""
    longest = max((float(r.steps["elapsed"].max()) for r in runs if _has(r.steps, "elapsed")), default=0.0)
    if longest >= 2 * 3600:
        return 3600.0, "elapsed time (h)"
    if longest >= 2 * 60:
        return 60.0, "elapsed time (min)"
    return 1.0, "elapsed time (s)"


def _with_x(frame: pd.DataFrame, run: Run, x: str, scale: float) -> pd.DataFrame:
    """`frame` with a float column `_x` (step, or elapsed time from the run's steps frame)."""
    if x == "step":
        return frame.assign(_x=frame["step"].to_numpy(dtype="float64"))
    if frame is run.steps:
        elapsed = frame["elapsed"]
    else:
        by_step = run.steps.drop_duplicates("step").set_index("step")["elapsed"]
        elapsed = frame["step"].map(by_step)
    return frame.assign(_x=elapsed.to_numpy(dtype="float64") / scale)


def _check_x(x: str) -> None:
    if x not in X_AXES:
        raise ValueError(f"x must be one of {X_AXES}, got {x!r}")


def _no_elapsed(run: Run, x: str) -> str | None:
    if x == "elapsed" and not _has(run.steps, "elapsed"):
        return "no elapsed time logged"
    return None


def _new_figure(
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


def _user_axes(ax, n: int, family: str) -> np.ndarray:
    axes = np.atleast_1d(np.asarray(ax, dtype=object)).ravel()
    if len(axes) < n:
        raise ValueError(f"{family}: needs {n} axes, got {len(axes)}")
    return axes[:n]


def _clip_line(run: Run) -> float | None:
    """The gradient-clipping threshold of a run: semantics first, then the resolved config."""
    clip = run.semantics.get("grad_norm_clip")
    if clip is None:
        clip = (run.meta.get("config") or {}).get("grad_clip")
    try:
        clip = float(clip)
    except (TypeError, ValueError):
        return None
    return clip if math.isfinite(clip) and clip > 0 else None


def _positive(values: pd.Series) -> np.ndarray:
    """Values for a log axis: zeros and negatives become gaps (NaN)."""
    v = values.to_numpy(dtype="float64", na_value=np.nan)
    return np.where(v > 0, v, np.nan)


def _all_zero(values: pd.Series) -> bool:
    v = values.dropna()
    return len(v) > 0 and bool((v == 0).all())


def _styled(fn):
    """Run a plot function under the house rcParams (fonts >= 9 pt, light grid) only."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(RC):
            return fn(*args, **kwargs)

    return wrapper


def _finish(fig: Figure, title: str, handles: list, *, ncols: int | None = None) -> None:
    fig.suptitle(title, y=1 - 0.08 / fig.get_figheight(), va="top")
    if handles:
        fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.0),
                   ncols=ncols or min(len(handles), 4), frameon=False)


# ---- per-layer routing stats (thresholds, complexity, heads) ---------------------------------


def _thin_by_layer(frame: pd.DataFrame, run: Run, cols: list[str], x: str, scale: float,
                   buckets: int) -> pd.DataFrame:
    """`frame` (columns selected from run.layers) without rows whose mean is NaN, with `_x`,
    decimated per layer. The loader's layout (one row per layer, repeated per step) is cut into
    per-layer strided views, each already in x order: no sort of 1.6M rows (same rows kept)."""
    block = layer_block(frame)
    if block is None:
        frame = _with_x(frame[frame[cols[0]].notna()], run, x, scale)
        return decimate(frame, cols, x="_x", by="layer", buckets=buckets)
    parts = []
    for j in range(len(block)):
        sub = frame.iloc[j::len(block)]
        sub = _with_x(sub[sub[cols[0]].notna()], run, x, scale)
        parts.append(decimate(sub, cols, x="_x", buckets=buckets))
    return pd.concat(parts)


def _plot_layer_stat(
    runs: Run | Sequence[Run],
    ax,
    *,
    family: str,
    stat: str,
    target: tuple[float, float] | None,
    target_label: str,
    title: str,
    ylabel: str,
    x: str,
    buckets: int,
    layers: Sequence[int] | None,
    run_label: Callable[[Run], str] = lambda r: r.name,
    ylim: tuple[float | None, float | None] | None = None,
) -> np.ndarray:
    _check_x(x)
    runs = _as_runs(runs)
    mean, lo, hi = f"{stat}_mean", f"{stat}_min", f"{stat}_max"

    def why(run: Run) -> str | None:
        if not _has(run.layers, mean):
            router = f" (router={run.router})" if run.router else ""
            return f"no {stat} logged{router}"
        return _no_elapsed(run, x)

    kept = _select(runs, family, why)
    scale, xlabel = _time_unit(r for _, r in kept) if x == "elapsed" else (1.0, "step")

    frames = {}
    for i, run in kept:
        cols = [c for c in (mean, lo, hi) if c in run.layers.columns]
        frame = run.layers[["step", "layer", *cols, *(["label"] if "label" in run.layers.columns else [])]]
        frames[i] = _thin_by_layer(frame, run, cols, x, scale, buckets)
    all_layers = sorted({int(v) for f in frames.values() for v in f["layer"].unique()})
    if layers is not None:
        all_layers = [l for l in all_layers if l in set(layers)]
        if not all_layers:
            raise MissingDataError(f"{family}: skipped, none of layers {list(layers)} logged")
    n = len(all_layers)

    own_figure = ax is None
    if own_figure:
        ncols = min(4, n)
        nrows = math.ceil(n / ncols)
        n_handles = len(kept) + 2
        legend_rows = math.ceil(n_handles / 4)
        figsize = (FIGSIZE[0], max(FIGSIZE[1], 1.9 * nrows + 1.2 + 0.24 * legend_rows))
        fig, grid = _new_figure(nrows, ncols, figsize=figsize, legend_rows=legend_rows)
        for extra in grid.ravel()[n:]:
            extra.remove()
        axes = grid.ravel()[:n]
    else:
        axes = _user_axes(ax, n, family)
        fig = axes[0].figure
        ncols = len(axes)

    band_any = False
    for k, (layer, a) in enumerate(zip(all_layers, axes)):
        if target is not None:
            a.axhspan(*target, color=TARGET_COLOR, alpha=0.10, linewidth=0, zorder=0)
        label = None
        for i, run in kept:
            f = frames[i]
            f = f[f["layer"] == layer].sort_values("_x")
            if f.empty:
                continue
            color = _run_color(i)
            if lo in f.columns and hi in f.columns and f[lo].notna().any():
                a.fill_between(f["_x"], f[lo], f[hi], color=color, alpha=0.18, linewidth=0)
                band_any = True
            a.plot(f["_x"], f[mean], color=color, linewidth=1.0)
            if label is None and "label" in f.columns and f["label"].notna().any():
                label = str(f["label"].dropna().iloc[0])
        if label == MODEL_WIDE:
            a.set_title("all layers (one model-wide value per step)")
        else:
            a.set_title(f"layer {layer}" + (f" ({label})" if label and label != f"L{layer}" else ""))
        if own_figure:
            if k >= n - ncols:
                a.set_xlabel(xlabel)
            if k % ncols == 0 and n <= ncols:
                a.set_ylabel(ylabel)
        else:
            a.set_xlabel(xlabel)
            a.set_ylabel(ylabel)
        if ylim is not None:
            a.set_ylim(*ylim)
        if x == "step":
            a.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter(sep=""))
            a.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(3 if ncols > 2 else 6))

    handles = [Line2D([], [], color=_run_color(i), linewidth=1.5, label=f"{run_label(r)}: mean") for i, r in kept]
    if band_any:
        handles.append(Patch(color="0.5", alpha=0.3, label="min–max over tokens"))
    if target is not None:
        handles.append(Patch(color=TARGET_COLOR, alpha=0.25, label=target_label))
    if own_figure:
        if n > ncols:  # several rows: one y label for all of them
            fig.supylabel(ylabel, x=0.12 / fig.get_figwidth(), ha="left", fontsize=RC["axes.labelsize"])
        name = f": {kept[0][1].name}" if len(kept) == 1 else ""
        _finish(fig, title + name, handles)
    else:
        axes[0].legend(handles=handles, loc="best")
        axes[0].figure.suptitle(title) if len(axes) > 1 else axes[0].set_title(f"{title}, {axes[0].get_title()}")
    return axes


@_styled
def plot_thresholds(runs, ax=None, *, x: str = "step", buckets: int = LAYER_BUCKETS, layers=None) -> np.ndarray:
    """Router threshold tau per layer: mean over tokens (line), min–max (band), [0.3, 0.8] target."""
    return _plot_layer_stat(
        runs, ax, family="thresholds", stat="threshold", target=THRESHOLD_TARGET,
        target_label=f"target {THRESHOLD_TARGET[0]:g}–{THRESHOLD_TARGET[1]:g}",
        title="Router threshold τ per layer", ylabel="threshold τ (probability)",
        x=x, buckets=buckets, layers=layers, ylim=(0.0, 1.0),
    )


MODEL_WIDE = "model-wide"


def _model_wide_as_layer(run: Run, stat: str) -> Run:
    """`run` with its model-wide `<stat>_mean/min/max` step columns as a single pseudo-layer.

    Reference Rust trainer logs print complexity once per epoch line for the whole model (the
    importer keeps it in step columns, not per layer); drawing it as one panel beats skipping it.
    Runs with per-layer values are returned unchanged; the input is never mutated.
    """
    mean = f"{stat}_mean"
    if _has(run.layers, mean) or not _has(run.steps, mean):
        return run
    cols = [c for c in (mean, f"{stat}_min", f"{stat}_max") if c in run.steps.columns]
    frame = run.steps[["step", *cols]].assign(layer=0, label=MODEL_WIDE)
    return dataclasses.replace(run, layers=frame)


@_styled
def plot_complexity(runs, ax=None, *, x: str = "step", buckets: int = LAYER_BUCKETS, layers=None) -> np.ndarray:
    """Predicted token complexity c per layer: mean (line), min–max (band), [0, 1] valid range."""
    return _plot_layer_stat(
        [_model_wide_as_layer(r, "complexity") for r in _as_runs(runs)], ax, family="complexity", stat="complexity", target=COMPLEXITY_TARGET,
        target_label=f"valid range {COMPLEXITY_TARGET[0]:g}–{COMPLEXITY_TARGET[1]:g}",
        title="Predicted token complexity c per layer", ylabel="complexity c (0–1)",
        x=x, buckets=buckets, layers=layers, ylim=(-0.05, 1.05),
    )


_HEADS_MEANING = {
    schema.HEADS_HARD_COUNT: ("hard count", "heads per token (hard-mask count)"),
    schema.HEADS_SOFT_WEIGHT_SUM: ("soft weight sum", "soft gate weight sum (not a count)"),
}


def _heads_semantics(run: Run) -> str:
    return run.semantics.get("heads", schema.HEADS_HARD_COUNT)


@_styled
def plot_heads(runs, ax=None, *, x: str = "step", buckets: int = LAYER_BUCKETS, layers=None) -> np.ndarray:
    """Heads used per token per layer over time, with the [3, 4] target band.

    What the number means comes from `run.semantics["heads"]`: a hard-mask count of selected
    heads, or (imported logs) a sum of soft gate weights, which is not a count. The axis label
    says which; when overlaid runs differ, each legend entry says it.
    """
    rs = _as_runs(runs)
    kinds = {_heads_semantics(r) for r in rs}
    if len(kinds) == 1:
        short, ylabel = _HEADS_MEANING.get(kinds.pop(), (None, "heads per token"))
        title = "Heads per token per layer" + (f" ({short})" if short else "")
        run_label = lambda r: r.name  # noqa: E731
    else:
        ylabel, title = "heads per token", "Heads per token per layer (semantics differ, see legend)"
        run_label = lambda r: f"{r.name} [{_HEADS_MEANING.get(_heads_semantics(r), (_heads_semantics(r),))[0]}]"  # noqa: E731
    n_heads = max((r.n_heads or 0 for r in rs), default=0)
    return _plot_layer_stat(
        rs, ax, family="heads", stat="heads", target=HEADS_TARGET,
        target_label=f"target {HEADS_TARGET[0]:g}–{HEADS_TARGET[1]:g}",
        title=title, ylabel=ylabel, x=x, buckets=buckets, layers=layers, run_label=run_label,
        ylim=(0, n_heads + 0.3) if n_heads else None,
    )


# ---- head load heatmap -----------------------------------------------------------------------


@_styled
def plot_head_load(runs, ax=None, *, window: str | float = "last") -> np.ndarray:
    """Layer x head load (fraction of tokens routed to each head), one panel per run.

    `window`: "last" (mean over the last 10% of the logged steps), "all", or a fraction.
    Cells below the dead-head level 1/(10 H) are marked in red.
    """
    runs = _as_runs(runs)

    def why(run: Run) -> str | None:
        return None if _has(run.head_load, "load") else "no head load logged"

    kept = _select(runs, "head_load", why)
    mats = {i: head_load_matrix(r.head_load, window=window) for i, r in kept}
    vmax = max(float(np.nanmax(m.to_numpy())) for m in mats.values())
    vmax = vmax if vmax > 0 else 1.0
    n = len(kept)

    own_figure = ax is None
    if own_figure:
        fig, grid = _new_figure(1, n, sharex=False, sharey=True, right=1.3, legend_rows=1)
        axes = grid.ravel()
    else:
        axes = _user_axes(ax, n, "head_load")
        fig = axes[0].figure

    image, any_dead = None, False
    for (i, run), a in zip(kept, axes):
        m = mats[i]
        first, last = window_steps(run.head_load, window=window)
        image = a.imshow(m.to_numpy(dtype="float64"), cmap="viridis", vmin=0.0, vmax=vmax,
                         aspect="auto", interpolation="nearest")
        a.grid(False)
        a.set_xticks(range(m.shape[1]), [str(h) for h in m.columns])
        a.set_yticks(range(m.shape[0]), [str(l) for l in m.index])
        a.set_xlabel("head")
        if a is axes[0] or not own_figure:
            a.set_ylabel("layer")
        span = f"step {first:,.0f}" if first == last else f"steps {first:,.0f}–{last:,.0f}"
        a.set_title(f"{run.name}: {span}" if n > 1 or not own_figure else f"mean over {span}")
        if m.shape[0] * m.shape[1] <= 256:
            h = m.shape[1]
            dead = 1.0 / (10 * h)
            for (r_, c_), v in np.ndenumerate(m.to_numpy(dtype="float64")):
                if np.isnan(v):
                    continue
                if v < dead:
                    a.add_patch(Rectangle((c_ - 0.45, r_ - 0.45), 0.9, 0.9, fill=False, edgecolor=LIMIT_COLOR,
                                          linewidth=2))
                    any_dead = True
                a.text(c_, r_, f"{v:.2f}", ha="center", va="center", fontsize=9 if h <= 8 else 7,
                       color="black" if v > 0.6 * vmax else "white", fontweight="bold" if v < dead else "normal")
    if image is not None:
        if own_figure:
            # A colorbar axes of its own, right of the panels (no layout engine to make room).
            top = max(a.get_position().y1 for a in axes)
            bottom = min(a.get_position().y0 for a in axes)
            cax = fig.add_axes((1 - 1.05 / fig.get_figwidth(), bottom, 0.18 / fig.get_figwidth(), top - bottom))
            fig.colorbar(image, cax=cax, label="fraction of tokens routed to head")
        else:
            fig.colorbar(image, ax=list(axes), label="fraction of tokens routed to head")
    what = {"all": "whole run", "last": "last 10% of steps"}.get(window) or f"last {float(window):.0%} of steps"
    title = f"Head load per layer and head (mean over {what})"
    if any_dead and own_figure:
        fig.text(0.5, 0.02, "red frame: dead head (load < 1/(10 H))", ha="center", va="bottom",
                 color=LIMIT_COLOR, fontsize=RC["legend.fontsize"])
    if own_figure:
        _finish(fig, title + (f": {kept[0][1].name}" if n == 1 else ""), [])
    return axes


# ---- gradient norms --------------------------------------------------------------------------


def _grad_groups(run: Run) -> list[str]:
    return [g for g in schema.GRAD_GROUPS if _has(run.steps, f"grad.{g}")]


def _log_axis(a) -> None:
    """Log y axis with plain tick labels (0.5, 1, 2, 5 ... instead of 5x10^-1)."""
    a.set_yscale("log")
    a.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    a.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    a.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _series(a, frame: pd.DataFrame, trend: pd.DataFrame, col: str, *, color, style="-", log=True,
            buckets: int = DEFAULT_BUCKETS) -> None:
    """A noisy series: every step (decimated per column, extremes kept; faint) under its trend
    (bucket mean, solid)."""
    values = _positive if log else (lambda v: v.to_numpy(dtype="float64", na_value=np.nan))
    f = decimate(frame[["_x", col]].dropna(), [col], x="_x", buckets=buckets).sort_values("_x")
    a.plot(f["_x"], values(f[col]), color=color, linestyle=style, linewidth=0.6, alpha=0.3)
    a.plot(trend["_x"], values(trend[col]), color=color, linestyle=style, linewidth=1.4)


def _panel_legend(fig: Figure, a, handles: list, ncols: int) -> None:
    """A legend under panel `a`, at the bottom of the figure (reserved by `legend_rows`)."""
    box = a.get_position()
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=((box.x0 + box.x1) / 2, 0.0),
               ncols=ncols, frameon=False, handlelength=1.8, columnspacing=1.0)


def _zero_note(a, zeros: list[str]) -> None:
    """Series identically 0 have no place on a log axis: name them in the panel instead."""
    if zeros:
        a.text(0.02, 0.02, "≡ 0 (not drawable on log scale): " + ", ".join(zeros), transform=a.transAxes,
               ha="left", va="bottom", fontsize=9, color=LIMIT_COLOR, wrap=True,
               bbox={"facecolor": "white", "edgecolor": LIMIT_COLOR, "alpha": 0.85, "pad": 2})


def _style_handles(kept: list[tuple[int, Run]]) -> list:
    return [Line2D([], [], color="0.3", linestyle=_run_style(i), label=r.name) for i, r in kept]


TREND_BUCKETS = 100


@_styled
def plot_grad_norms(runs, ax=None, *, x: str = "step", buckets: int = DEFAULT_BUCKETS) -> np.ndarray:
    """Gradient L2 norms on a log scale: total before/after clipping (left), per group (right).

    Faint lines: every logged step (decimated, extremes kept); solid: mean per 1% of the run.
    Lines: the 2.5 target (criterion) and each run's clipping threshold (from
    `semantics["grad_norm_clip"]` or config `grad_clip`). A group whose norm is identically 0
    cannot be drawn on a log axis; its legend entry says "≡ 0" instead.
    """
    _check_x(x)
    runs = _as_runs(runs)

    def why(run: Run) -> str | None:
        if not (_has(run.steps, "grad_norm") or _has(run.steps, "grad_norm_clipped") or _grad_groups(run)):
            return "no gradient norms logged"
        return _no_elapsed(run, x)

    kept = _select(runs, "grad_norms", why)
    multi = len(kept) > 1
    scale, xlabel = _time_unit(r for _, r in kept) if x == "elapsed" else (1.0, "step")
    groups = [g for g in schema.GRAD_GROUPS if any(g in _grad_groups(r) for _, r in kept)]
    n = 2 if groups else 1

    total_handles: list = []
    group_handles: dict[str, Line2D] = {}
    n_total = (len(kept) if multi else 0) + 4
    n_group = len(groups) + (len(kept) if multi else 0)
    legend_rows = max(math.ceil(n_total / 2), math.ceil(n_group / 3)) if n == 2 else math.ceil(n_total / 4)

    own_figure = ax is None
    if own_figure:
        fig, grid = _new_figure(1, n, sharey=True, legend_rows=legend_rows)
        axes = grid.ravel()
    else:
        axes = _user_axes(ax, n, "grad_norms")
        fig = axes[0].figure

    total_ax = axes[0]
    clips: dict[float, list[str]] = {}
    seen_pre = seen_post = False
    zeros: list[str] = []
    for i, run in kept:
        s = run.steps
        cols = [c for c in ("grad_norm", "grad_norm_clipped", *(f"grad.{g}" for g in groups)) if c in s.columns]
        frame = _with_x(s[["step", *cols, *(["elapsed"] if x == "elapsed" else [])]], run, x, scale)
        f = frame
        trend = bucket_mean(frame, cols, x="_x", buckets=TREND_BUCKETS)
        color, style = _run_color(i), _run_style(i)
        pre_is_grad_norm = run.semantics.get("grad_norm", schema.GRAD_NORM_PRE_CLIP) == schema.GRAD_NORM_PRE_CLIP
        if _has(f, "grad_norm"):
            _series(total_ax, f, trend, "grad_norm", color=color, style="-" if pre_is_grad_norm else "--",
                    buckets=buckets)
            seen_pre |= pre_is_grad_norm
            seen_post |= not pre_is_grad_norm
        if _has(f, "grad_norm_clipped"):
            _series(total_ax, f, trend, "grad_norm_clipped", color=color, style="--", buckets=buckets)
            seen_post = True
        if multi:
            total_handles.append(Line2D([], [], color=color, linewidth=1.4, label=run.name))
        clip = _clip_line(run)
        if clip is not None:
            clips.setdefault(clip, []).append(run.name)
        for j, g in enumerate(groups):
            col = f"grad.{g}"
            if not _has(f, col):
                continue
            _series(axes[1], f, trend, col, color=f"C{j}", style=style, buckets=buckets)
            group_handles.setdefault(g, Line2D([], [], color=f"C{j}", linewidth=1.4, label=g))
            if _all_zero(s[col]):
                zeros.append(f"{run.name}: {g}" if multi else g)

    for a in axes:
        _log_axis(a)
        a.axhline(GRAD_NORM_TARGET, color=LIMIT_COLOR, linestyle="--", linewidth=1.0)
        for clip in clips:
            a.axhline(clip, color="0.2", linestyle=":", linewidth=1.3)
        a.set_xlabel(xlabel)
        if x == "step":
            a.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter(sep=""))
    total_ax.set_ylabel("gradient L2 norm (log scale)")
    total_ax.set_title("total")
    if seen_pre:
        total_handles.append(Line2D([], [], color="0.3", label="before clipping"))
    if seen_post:
        total_handles.append(Line2D([], [], color="0.3", linestyle="--", label="after clipping"))
    total_handles.append(Line2D([], [], color=LIMIT_COLOR, linestyle="--", label=f"target ≤ {GRAD_NORM_TARGET:g}"))
    for clip, names in clips.items():
        who = "" if len(clips) == 1 else f" ({', '.join(names)})"
        total_handles.append(Line2D([], [], color="0.2", linestyle=":", label=f"clip at {clip:g}{who}"))
    handles = [total_handles, list(group_handles.values()) + (_style_handles(kept) if multi else [])]
    if groups:
        axes[1].set_title("per parameter group" + (" (line style = run)" if multi else ""))
        _zero_note(axes[1], zeros)
    if own_figure:
        if n == 2:
            _panel_legend(fig, axes[0], handles[0], 2)
            _panel_legend(fig, axes[1], handles[1], 3)
        else:
            fig.legend(handles=handles[0], loc="lower center", ncols=4, frameon=False)
        name = f": {kept[0][1].name}" if not multi else ""
        _finish(fig, f"Gradient norms{name} (faint: every step; solid: mean per 1% of steps)", [])
    else:
        for a, h in zip(axes, handles):
            a.legend(handles=h, loc="best")
    return axes


# ---- loss ------------------------------------------------------------------------------------


def _aux_terms(run: Run) -> list[str]:
    return [t for t in schema.AUX_TERMS if _has(run.steps, f"aux.{t}")]


@_styled
def plot_loss(runs, ax=None, *, x: str = "step", buckets: int = DEFAULT_BUCKETS) -> np.ndarray:
    """Language-model loss (left, log scale, 0.40 target, eval points) and auxiliary losses
    (right, raw unweighted values), with training-phase boundaries marked on both."""
    _check_x(x)
    runs = _as_runs(runs)

    def why(run: Run) -> str | None:
        if not (_has(run.steps, "lm_loss") or _has(run.steps, "loss")):
            return "no loss logged"
        return _no_elapsed(run, x)

    kept = _select(runs, "loss", why)
    multi = len(kept) > 1
    scale, xlabel = _time_unit(r for _, r in kept) if x == "elapsed" else (1.0, "step")
    terms = [t for t in schema.AUX_TERMS if any(t in _aux_terms(r) for _, r in kept)]
    n = 2 if terms else 1
    n_lm = (len(kept) if multi else 0) + 4
    n_aux = len(terms) + (len(kept) if multi else 0)
    legend_rows = max(math.ceil(n_lm / 2), math.ceil(n_aux / 2)) if n == 2 else math.ceil(n_lm / 4)

    own_figure = ax is None
    if own_figure:
        fig, grid = _new_figure(1, n, sharey=False, legend_rows=legend_rows)
        axes = grid.ravel()
    else:
        axes = _user_axes(ax, n, "loss")
        fig = axes[0].figure

    lm_ax = axes[0]
    lm_handles: list = []
    aux_handles: dict[str, Line2D] = {}
    boundaries: dict[float, str] = {}
    mains, evals_drawn = set(), False
    zeros: list[str] = []
    for i, run in kept:
        s = run.steps
        cols = [c for c in ("lm_loss", "loss", *(f"aux.{t}" for t in terms)) if c in s.columns]
        frame = _with_x(s[["step", *cols, *(["elapsed"] if x == "elapsed" else [])]], run, x, scale)
        f = frame
        trend = bucket_mean(frame, cols, x="_x", buckets=TREND_BUCKETS)
        color, style = _run_color(i), _run_style(i)
        main = "lm_loss" if _has(s, "lm_loss") else "loss"
        mains.add(main)
        _series(lm_ax, f, trend, main, color=color, buckets=buckets)
        if multi:
            lm_handles.append(Line2D([], [], color=color, linewidth=1.4, label=run.name))
        if not run.evals.empty and _has(run.evals, "loss"):
            ev = _with_x(run.evals[["step", "loss"]].dropna(), run, x, scale)
            lm_ax.plot(ev["_x"], _positive(ev["loss"]), linestyle="none", marker="o", markersize=4.5,
                       color=color, markeredgecolor="black", markeredgewidth=0.6, zorder=5)
            evals_drawn = True
        if "phase" in s.columns:
            for _, row in phase_boundaries(_with_x(s[["step", "phase", *(["elapsed"] if x == "elapsed" else [])]],
                                                   run, x, scale), x="_x").iterrows():
                boundaries.setdefault(float(row["_x"]), str(row["phase"]))
        for j, t in enumerate(terms):
            col = f"aux.{t}"
            if not _has(f, col):
                continue
            _series(axes[1], f, trend, col, color=f"C{j}", style=style, buckets=buckets)
            aux_handles.setdefault(t, Line2D([], [], color=f"C{j}", linewidth=1.4, label=t))
            if _all_zero(s[col]):
                zeros.append(f"{run.name}: {t}" if multi else t)

    lm_ax.axhline(LOSS_TARGET, color=TARGET_COLOR, linestyle="--", linewidth=1.2)
    _log_axis(lm_ax)
    lm_ax.set_ylabel("cross-entropy (nats/token, log)")
    lm_ax.set_title("language-model loss" if mains == {"lm_loss"} else "loss (total where no LM loss logged)")
    if terms:
        _log_axis(axes[1])
        axes[1].set_ylabel("raw value, unweighted (log)")
        axes[1].set_title("auxiliary losses" + (" (line style = run)" if multi else ""))
        _zero_note(axes[1], zeros)
    for a in axes:
        a.set_xlabel(xlabel)
        if x == "step":
            a.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter(sep=""))
        for bx, phase in sorted(boundaries.items()):
            a.axvline(bx, color="0.35", linestyle=":", linewidth=1.3)
            a.annotate(phase, xy=(bx, 0.99), xycoords=("data", "axes fraction"), xytext=(3, 0),
                       textcoords="offset points", va="top", ha="left", fontsize=9, color="0.25",
                       bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 1})
    lm_handles.append(Line2D([], [], color="0.3", linewidth=1.4, label="LM loss" if mains == {"lm_loss"} else "loss"))
    if evals_drawn:
        lm_handles.append(Line2D([], [], color="0.5", marker="o", linestyle="none", markeredgecolor="black",
                                 label="eval loss"))
    lm_handles.append(Line2D([], [], color=TARGET_COLOR, linestyle="--", label=f"target ≤ {LOSS_TARGET:g}"))
    if boundaries:
        lm_handles.append(Line2D([], [], color="0.35", linestyle=":", label="phase boundary"))
    handles = [lm_handles, list(aux_handles.values()) + (_style_handles(kept) if multi else [])]
    if own_figure:
        if n == 2:
            _panel_legend(fig, axes[0], handles[0], 2)
            _panel_legend(fig, axes[1], handles[1], 2)
        else:
            fig.legend(handles=handles[0], loc="lower center", ncols=4, frameon=False)
        name = f": {kept[0][1].name}" if not multi else ""
        _finish(fig, f"Loss{name} (faint: every step; solid: mean per 1% of steps)", [])
    else:
        for a, h in zip(axes, handles):
            a.legend(handles=h, loc="best")
    return axes


# ---- writing ---------------------------------------------------------------------------------

FAMILIES: dict[str, Callable[..., np.ndarray]] = {
    "thresholds": plot_thresholds,
    "complexity": plot_complexity,
    "heads": plot_heads,
    "head_load": plot_head_load,
    "grad_norms": plot_grad_norms,
    "loss": plot_loss,
}


def _temp_name(path: Path) -> str:
    return f".{path.name}."


def _save_temp(fig: Figure, path: Path, fmt: str) -> Path:
    """Draw into a temp file next to `path`; `write_figures` renames all of them at the end."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_name(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format=fmt, dpi=DPI)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return Path(tmp)


def _prepare(out_dir: Path) -> list[Path]:
    """Create `out_dir` if needed and check it can be written; returns the directories created."""
    created = make_dirs(out_dir)
    try:
        fd, probe = tempfile.mkstemp(dir=out_dir, prefix=".moh-plot-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        remove_dirs(created)
        raise OutputError(f"cannot write to {out_dir}: {e.strerror or e}") from None
    return created


def prepare_output_dir(out_dir: Path) -> Path:
    """Create `out_dir` if needed and check it can be written; raises OSError (OutputError) if not."""
    out_dir = Path(out_dir)
    _prepare(out_dir)
    return out_dir


def _render(runs: list[Run], name: str, out: Path, fmt: str, x: str, buckets: int | None,
            clear: bool = True) -> tuple[Path | None, Path | None, list[str]]:
    """Draw one family into a temp file; returns (path, temp file; both None when skipped, warnings).
    `clear`: free the figure's artists at once (a worker process about to exit need not)."""
    with warnings.catch_warnings(record=True) as caught, matplotlib.rc_context(RC):
        warnings.simplefilter("always", PlotWarning)
        try:
            kwargs = {} if name == "head_load" else {"x": x}
            if buckets is not None and name != "head_load":
                kwargs["buckets"] = buckets
            axes = FAMILIES[name](runs, **kwargs)
        except MissingDataError as exc:
            warnings.warn(str(exc), PlotWarning)
            path = tmp = None
        else:
            fig = axes[0].figure
            try:
                path = out / f"{name}.{fmt}"
                tmp = _save_temp(fig, path, fmt)
            finally:
                if clear:
                    fig.clear()
    return path, tmp, [str(w.message) for w in caught if issubclass(w.category, PlotWarning)]


_FORKED_RUNS: list[Run] = []  # handed to forked workers by inheritance, not pickled (GBs on long runs)


# Drawing cost of each family on a long run, most expensive first (bench/bench_plot.py).
_COST_RANK = {name: i for i, name in enumerate(
    ["heads", "thresholds", "complexity", "head_load", "grad_norms", "loss"])}


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _render_forked(name: str, out: Path, fmt: str, x: str, buckets: int | None):
    return _render(_FORKED_RUNS, name, out, fmt, x, buckets, clear=False)


def write_figures(
    runs: Run | Sequence[Run],
    out_dir: Path | str,
    *,
    fmt: str = "png",
    x: str = "step",
    families: Sequence[str] | None = None,
    buckets: int | None = None,
    jobs: int | None = None,
) -> list[Path]:
    """Draw every family for `runs` (overlaid) and save `<out_dir>/<family>.<fmt>`.

    Returns the written paths, in family order. A family without data is skipped with a
    `PlotWarning`. Raises OSError (OutputError) when `out_dir` cannot be created or written.
    All or nothing: figures are drawn into temp files and renamed into place only once every
    family has been drawn, so a failure (full disk, a drawing error) leaves no new figure, no
    temp file, and no directory this call created.
    `jobs`: figures drawn in that many forked processes (serial where fork is unavailable).
    Default (None): one per CPU this process may use, up to the number of families. On a quiet
    2-core machine the six figures of a 200k-step run took 3.1-3.3 s with 2 jobs against
    4.1-4.6 s in turn; on a machine already busy with other work extra jobs do not help.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    _check_x(x)
    runs = _as_runs(runs)
    names = list(families or FAMILIES)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown figure families {unknown}; known: {list(FAMILIES)}")
    out = Path(out_dir)
    created = _prepare(out)
    jobs = min(_usable_cpus(), len(names)) if jobs is None else jobs
    try:
        if jobs > 1 and len(names) > 1 and "fork" in multiprocessing.get_all_start_methods():
            global _FORKED_RUNS
            _FORKED_RUNS = runs
            # The costliest families are handed out first, so the last one to finish is a cheap one.
            by_cost = sorted(names, key=lambda n: _COST_RANK.get(n, len(_COST_RANK)))
            try:
                ctx = multiprocessing.get_context("fork")
                with ProcessPoolExecutor(max_workers=min(jobs, len(names)), mp_context=ctx) as pool:
                    futures = {n: pool.submit(_render_forked, n, out, fmt, x, buckets) for n in by_cost}
                    results = [futures[n].result() for n in names]
            finally:
                _FORKED_RUNS = []
        else:
            results = []
            for name in names:
                results.append(_render(runs, name, out, fmt, x, buckets))
        mode = file_mode()
        for path, tmp, _ in results:
            if tmp is not None:
                os.chmod(tmp, mode)  # mkstemp's 0600 would hide shared figures from others
                os.replace(tmp, path)
    except BaseException as e:
        for name in names:  # temp files of every family, whichever process drew them
            for tmp in out.glob(_temp_name(out / f"{name}.{fmt}") + "*.tmp"):
                try:
                    tmp.unlink()
                except OSError:
                    pass
        remove_dirs(created)
        if isinstance(e, OSError) and not isinstance(e, OutputError):
            raise OutputError(f"cannot write to {out}: {e.strerror or e}") from None
        raise
    written = []
    for path, _, messages in results:
        for message in messages:
            warnings.warn(message, PlotWarning, stacklevel=2)
        if path is not None:
            written.append(path)
    return written
