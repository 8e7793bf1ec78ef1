"""Per-layer routing-stat figures: thresholds, complexity and heads, one panel per layer."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from analyze.decimate import decimate
from analyze.run import Run, layer_block
from moh import schema
from .style import (COMPLEXITY_TARGET, FIGSIZE, HEADS_TARGET, LAYER_BUCKETS, RC, TARGET_COLOR, THRESHOLD_TARGET,
                    MissingDataError)
from analyze.rules.units import reword
from .common import (PHASE_COLOR, as_runs, shared_unit, break_gaps, check_x, finish, format_step_axis, has, mark_phases,
                     new_figure, no_elapsed, phase_xs, run_color, select, step_label, styled, time_unit, user_axes,
                     with_x)


BAND_ALPHA = 0.18


def _thin_by_layer(frame: pd.DataFrame, run: Run, cols: list[str], x: str, scale: float,
                   buckets: int) -> pd.DataFrame:
    """`frame` (columns selected from run.layers) without rows whose mean is NaN, with `_x`,
    decimated per layer. The loader's layout (one row per layer, repeated per step) is cut into
    per-layer strided views, each already in x order: no sort of 1.6M rows (same rows kept)."""
    block = layer_block(frame)
    if block is None:
        frame = with_x(frame[frame[cols[0]].notna()], run, x, scale)
        return decimate(frame, cols, x="_x", by="layer", buckets=buckets)
    parts = []
    for j in range(len(block)):
        sub = frame.iloc[j::len(block)]
        sub = with_x(sub[sub[cols[0]].notna()], run, x, scale)
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
    check_x(x)
    runs = as_runs(runs)
    mean, lo, hi = f"{stat}_mean", f"{stat}_min", f"{stat}_max"

    def why(run: Run) -> str | None:
        if not has(run.layers, mean):
            router = f" (router={run.router})" if run.router else ""
            return f"no {stat} logged{router}"
        return no_elapsed(run, x)

    kept = select(runs, family, why)
    scale, xlabel = time_unit(r for _, r in kept) if x == "elapsed" else (1.0, step_label(r for _, r in kept))

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
        n_handles = len(kept) + 3  # + band, target, phase boundary
        legend_rows = math.ceil(n_handles / 4)
        figsize = (FIGSIZE[0], max(FIGSIZE[1], 1.9 * nrows + 1.2 + 0.24 * legend_rows))
        fig, grid = new_figure(nrows, ncols, figsize=figsize, legend_rows=legend_rows)
        for extra in grid.ravel()[n:]:
            extra.remove()
        axes = grid.ravel()[:n]
    else:
        axes = user_axes(ax, n, family)
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
            color = run_color(i)
            if lo in f.columns and hi in f.columns and f[lo].notna().any():
                a.fill_between(*break_gaps(f["_x"], f[lo], f[hi]), color=color, alpha=BAND_ALPHA, linewidth=0)
                band_any = True
            a.plot(*break_gaps(f["_x"], f[mean]), color=color, linewidth=1.0)
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
            format_step_axis(a, [r for _, r in kept], nbins=3 if ncols > 2 else 6)
    boundaries = phase_xs(kept, x, scale)
    mark_phases(axes, boundaries, label_on=axes[:1])

    handles = [Line2D([], [], color=run_color(i), linewidth=1.5, label=f"{run_label(r)}: mean") for i, r in kept]
    if band_any:  # the swatch looks like the band: the run's colour when one run is drawn
        handles.append(Patch(color=run_color(kept[0][0]) if len(kept) == 1 else "0.5", alpha=BAND_ALPHA,
                             linewidth=0, label="min–max over tokens"))
    if boundaries:
        handles.append(Line2D([], [], color=PHASE_COLOR, linestyle=":", label="phase boundary"))
    if target is not None:
        handles.append(Patch(color=TARGET_COLOR, alpha=0.25, label=target_label))
    if own_figure:
        if n > ncols:  # several rows: one y label for all of them
            fig.supylabel(ylabel, x=0.12 / fig.get_figwidth(), ha="left", fontsize=RC["axes.labelsize"])
        name = f": {kept[0][1].name}" if len(kept) == 1 else ""
        finish(fig, title + name, handles)
    else:
        axes[0].legend(handles=handles, loc="best")
        axes[0].figure.suptitle(title) if len(axes) > 1 else axes[0].set_title(f"{title}, {axes[0].get_title()}")
    return axes


@styled
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
    if has(run.layers, mean) or not has(run.steps, mean):
        return run
    cols = [c for c in (mean, f"{stat}_min", f"{stat}_max") if c in run.steps.columns]
    frame = run.steps[["step", *cols]].assign(layer=0, label=MODEL_WIDE)
    return dataclasses.replace(run, layers=frame)


@styled
def plot_complexity(runs, ax=None, *, x: str = "step", buckets: int = LAYER_BUCKETS, layers=None) -> np.ndarray:
    """Predicted token complexity c per layer: mean (line), min–max (band), [0, 1] valid range."""
    return _plot_layer_stat(
        [_model_wide_as_layer(r, "complexity") for r in as_runs(runs)], ax, family="complexity", stat="complexity", target=COMPLEXITY_TARGET,
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


@styled
def plot_heads(runs, ax=None, *, x: str = "step", buckets: int = LAYER_BUCKETS, layers=None) -> np.ndarray:
    """Heads used per token per layer over time, with the [3, 4] target band.

    What the number means comes from `run.semantics["heads"]`: a hard-mask count of selected
    heads, or (imported logs) a sum of soft gate weights, which is not a count. The axis label
    says which; when overlaid runs differ, each legend entry says it.
    """
    rs = as_runs(runs)
    kinds = {_heads_semantics(r) for r in rs}
    if len(kinds) == 1:
        short, ylabel = _HEADS_MEANING.get(kinds.pop(), (None, "heads per token"))
        title = "Heads per token per layer" + (f" ({short})" if short else "")
        run_label = lambda r: r.name  # noqa: E731
    else:
        ylabel, title = "heads per token", "Heads per token per layer (semantics differ, see legend)"
        run_label = lambda r: f"{r.name} [{_HEADS_MEANING.get(_heads_semantics(r), (_heads_semantics(r),))[0]}]"  # noqa: E731
    n_heads = max((r.n_heads or 0 for r in rs), default=0)
    unit = shared_unit(rs)
    title, ylabel = reword(title, unit), reword(ylabel, unit)
    return _plot_layer_stat(
        rs, ax, family="heads", stat="heads", target=HEADS_TARGET,
        target_label=f"target {HEADS_TARGET[0]:g}–{HEADS_TARGET[1]:g}",
        title=title, ylabel=ylabel, x=x, buckets=buckets, layers=layers, run_label=run_label,
        ylim=(0, n_heads + 0.3) if n_heads else None,
    )
