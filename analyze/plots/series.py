"""Noisy per-step series on log axes: gradient norms and losses. Both figures are one helper
(`_TwoPanels`) fed with what differs: the columns, the reference lines, the titles."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analyze.decimate import DEFAULT_BUCKETS, bucket_mean, decimate, phase_boundaries
from analyze.run import Run
from moh import schema
from .style import GRAD_NORM_TARGET, LIMIT_COLOR, LOSS_TARGET, TARGET_COLOR
from .common import (all_zero, as_runs, check_x, clip_line, finish, has, new_figure, no_elapsed, positive,
                     run_color, run_style, select, styled, time_unit, user_axes, with_x)


def _grad_groups(run: Run) -> list[str]:
    return [g for g in schema.GRAD_GROUPS if has(run.steps, schema.grad_column(g))]


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
    values = positive if log else (lambda v: v.to_numpy(dtype="float64", na_value=np.nan))
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
    return [Line2D([], [], color="0.3", linestyle=run_style(i), label=r.name) for i, r in kept]


TREND_BUCKETS = 100


class _TwoPanels:
    """What the gradient-norm and loss figures share: a left panel of each run's main series and
    a right panel of named sub-series (gradient groups, aux terms), both noisy per-step lines
    under a trend on a log axis, with the legends under the panels. The figure functions add
    what is their own (reference lines, clip values, eval points, phase boundaries)."""

    def __init__(self, runs, ax, *, family: str, x: str, why_missing, names_of, all_names, prefix: str,
                 right_legend_cols: int, sharey: bool):
        check_x(x)
        self.family, self.x, self.prefix = family, x, prefix
        self.kept = select(as_runs(runs), family, why_missing)
        self.multi = len(self.kept) > 1
        self.scale, self.xlabel = (time_unit(r for _, r in self.kept) if x == "elapsed" else (1.0, "step"))
        self.right = [t for t in all_names if any(t in names_of(r) for _, r in self.kept)]
        self.n = 2 if self.right else 1
        self.right_legend_cols = right_legend_cols
        n_left = (len(self.kept) if self.multi else 0) + 4
        n_right = len(self.right) + (len(self.kept) if self.multi else 0)
        legend_rows = (max(math.ceil(n_left / 2), math.ceil(n_right / right_legend_cols)) if self.n == 2
                       else math.ceil(n_left / 4))
        self.own_figure = ax is None
        if self.own_figure:
            self.fig, grid = new_figure(1, self.n, sharey=sharey, legend_rows=legend_rows)
            self.axes = grid.ravel()
        else:
            self.axes = user_axes(ax, self.n, family)
            self.fig = self.axes[0].figure
        self.right_handles: dict[str, Line2D] = {}
        self.zeros: list[str] = []

    def frame(self, run: Run, left_cols: tuple[str, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The run's steps (the columns drawn, with `_x`) and their trend (bucket means)."""
        s = run.steps
        cols = [c for c in (*left_cols, *(self.prefix + t for t in self.right)) if c in s.columns]
        frame = with_x(s[["step", *cols, *(["elapsed"] if self.x == "elapsed" else [])]], run, self.x, self.scale)
        return frame, bucket_mean(frame, cols, x="_x", buckets=TREND_BUCKETS)

    def draw_right(self, i: int, run: Run, f: pd.DataFrame, trend: pd.DataFrame, buckets: int) -> None:
        """The run's sub-series on the right panel: colour = sub-series, line style = run."""
        for j, t in enumerate(self.right):
            col = self.prefix + t
            if not has(f, col):
                continue
            _series(self.axes[1], f, trend, col, color=f"C{j}", style=run_style(i), buckets=buckets)
            self.right_handles.setdefault(t, Line2D([], [], color=f"C{j}", linewidth=1.4, label=t))
            if all_zero(run.steps[col]):
                self.zeros.append(f"{run.name}: {t}" if self.multi else t)

    def label_right(self, title: str) -> None:
        self.axes[1].set_title(title + (" (line style = run)" if self.multi else ""))
        _zero_note(self.axes[1], self.zeros)

    def format_x(self, a) -> None:
        a.set_xlabel(self.xlabel)
        if self.x == "step":
            a.xaxis.set_major_formatter(matplotlib.ticker.EngFormatter(sep=""))

    def finish(self, left_handles: list, title: str) -> np.ndarray:
        """Legends (under the panels of an own figure, else in each panel) and the title."""
        handles = [left_handles,
                   list(self.right_handles.values()) + (_style_handles(self.kept) if self.multi else [])]
        if self.own_figure:
            if self.n == 2:
                _panel_legend(self.fig, self.axes[0], handles[0], 2)
                _panel_legend(self.fig, self.axes[1], handles[1], self.right_legend_cols)
            else:
                self.fig.legend(handles=handles[0], loc="lower center", ncols=4, frameon=False)
            name = f": {self.kept[0][1].name}" if not self.multi else ""
            finish(self.fig, f"{title}{name} (faint: every step; solid: mean per 1% of steps)", [])
        else:
            for a, h in zip(self.axes, handles):
                a.legend(handles=h, loc="best")
        return self.axes


@styled
def plot_grad_norms(runs, ax=None, *, x: str = "step", buckets: int = DEFAULT_BUCKETS) -> np.ndarray:
    """Gradient L2 norms on a log scale: total before/after clipping (left), per group (right).

    Faint lines: every logged step (decimated, extremes kept); solid: mean per 1% of the run.
    Lines: the 2.5 target (criterion) and each run's clipping threshold (from
    `semantics["grad_norm_clip"]` or config `grad_clip`). A group whose norm is identically 0
    cannot be drawn on a log axis; its legend entry says "≡ 0" instead.
    """
    def why(run: Run) -> str | None:
        if not (has(run.steps, "grad_norm") or has(run.steps, "grad_norm_clipped") or _grad_groups(run)):
            return "no gradient norms logged"
        return no_elapsed(run, x)

    p = _TwoPanels(runs, ax, family="grad_norms", x=x, why_missing=why, names_of=_grad_groups,
                   all_names=schema.GRAD_GROUPS, prefix=schema.STEP_GROUPS["grad_norms"], right_legend_cols=3, sharey=True)
    total_ax = p.axes[0]
    total_handles: list = []
    clips: dict[float, list[str]] = {}
    seen_pre = seen_post = False
    for i, run in p.kept:
        f, trend = p.frame(run, ("grad_norm", "grad_norm_clipped"))
        color = run_color(i)
        pre_is_grad_norm = run.semantics.get("grad_norm", schema.GRAD_NORM_PRE_CLIP) == schema.GRAD_NORM_PRE_CLIP
        if has(f, "grad_norm"):
            _series(total_ax, f, trend, "grad_norm", color=color, style="-" if pre_is_grad_norm else "--",
                    buckets=buckets)
            seen_pre |= pre_is_grad_norm
            seen_post |= not pre_is_grad_norm
        if has(f, "grad_norm_clipped"):
            _series(total_ax, f, trend, "grad_norm_clipped", color=color, style="--", buckets=buckets)
            seen_post = True
        if p.multi:
            total_handles.append(Line2D([], [], color=color, linewidth=1.4, label=run.name))
        clip = clip_line(run)
        if clip is not None:
            clips.setdefault(clip, []).append(run.name)
        p.draw_right(i, run, f, trend, buckets)

    for a in p.axes:
        _log_axis(a)
        a.axhline(GRAD_NORM_TARGET, color=LIMIT_COLOR, linestyle="--", linewidth=1.0)
        for clip in clips:
            a.axhline(clip, color="0.2", linestyle=":", linewidth=1.3)
        p.format_x(a)
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
    if p.right:
        p.label_right("per parameter group")
    return p.finish(total_handles, "Gradient norms")


def _aux_terms(run: Run) -> list[str]:
    return [t for t in schema.AUX_TERMS if has(run.steps, schema.aux_column(t))]


@styled
def plot_loss(runs, ax=None, *, x: str = "step", buckets: int = DEFAULT_BUCKETS) -> np.ndarray:
    """Language-model loss (left, log scale, 0.40 target, eval points) and auxiliary losses
    (right, raw unweighted values), with training-phase boundaries marked on both."""
    def why(run: Run) -> str | None:
        if not (has(run.steps, "lm_loss") or has(run.steps, "loss")):
            return "no loss logged"
        return no_elapsed(run, x)

    p = _TwoPanels(runs, ax, family="loss", x=x, why_missing=why, names_of=_aux_terms,
                   all_names=schema.AUX_TERMS, prefix=schema.STEP_GROUPS["aux"], right_legend_cols=2, sharey=False)
    lm_ax = p.axes[0]
    lm_handles: list = []
    boundaries: dict[float, str] = {}
    mains, evals_drawn = set(), False
    for i, run in p.kept:
        s = run.steps
        f, trend = p.frame(run, ("lm_loss", "loss"))
        color = run_color(i)
        main = "lm_loss" if has(s, "lm_loss") else "loss"
        mains.add(main)
        _series(lm_ax, f, trend, main, color=color, buckets=buckets)
        if p.multi:
            lm_handles.append(Line2D([], [], color=color, linewidth=1.4, label=run.name))
        if not run.evals.empty and has(run.evals, "loss"):
            ev = with_x(run.evals[["step", "loss"]].dropna(), run, x, p.scale)
            lm_ax.plot(ev["_x"], positive(ev["loss"]), linestyle="none", marker="o", markersize=4.5,
                       color=color, markeredgecolor="black", markeredgewidth=0.6, zorder=5)
            evals_drawn = True
        if "phase" in s.columns:
            for _, row in phase_boundaries(with_x(s[["step", "phase", *(["elapsed"] if x == "elapsed" else [])]],
                                                  run, x, p.scale), x="_x").iterrows():
                boundaries.setdefault(float(row["_x"]), str(row["phase"]))
        p.draw_right(i, run, f, trend, buckets)

    lm_ax.axhline(LOSS_TARGET, color=TARGET_COLOR, linestyle="--", linewidth=1.2)
    _log_axis(lm_ax)
    lm_ax.set_ylabel("cross-entropy (nats/token, log)")
    lm_ax.set_title("language-model loss" if mains == {"lm_loss"} else "loss (total where no LM loss logged)")
    if p.right:
        _log_axis(p.axes[1])
        p.axes[1].set_ylabel("raw value, unweighted (log)")
        p.label_right("auxiliary losses")
    for a in p.axes:
        p.format_x(a)
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
    return p.finish(lm_handles, "Loss")
