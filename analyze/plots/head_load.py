"""The head-load heatmap: mean share of tokens per head and layer over a window of the run."""

from __future__ import annotations

import numpy as np
from matplotlib.patches import Rectangle

from analyze.decimate import head_load_matrix, window_steps
from analyze.run import Run
from .style import LIMIT_COLOR, RC
from analyze.rules.units import reword
from .common import as_runs, finish, has, new_figure, select, shared_unit, styled, user_axes


@styled
def plot_head_load(runs, ax=None, *, window: str | float = "last") -> np.ndarray:
    """Layer x head load (fraction of tokens routed to each head), one panel per run.

    `window`: "last" (mean over the last 10% of the logged steps), "all", or a fraction.
    Cells below the dead-head level 1/(10 H) are marked in red.
    """
    runs = as_runs(runs)

    def why(run: Run) -> str | None:
        return None if has(run.head_load, "load") else "no head load logged"

    kept = select(runs, "head_load", why)
    mats = {i: head_load_matrix(r.head_load, window=window) for i, r in kept}
    vmax = max(float(np.nanmax(m.to_numpy())) for m in mats.values())
    vmax = vmax if vmax > 0 else 1.0
    n = len(kept)

    own_figure = ax is None
    if own_figure:
        fig, grid = new_figure(1, n, sharex=False, sharey=True, right=1.3, legend_rows=1)
        axes = grid.ravel()
    else:
        axes = user_axes(ax, n, "head_load")
        fig = axes[0].figure

    image, any_dead = None, False
    unit = shared_unit([run for _, run in kept])
    for (i, run), a in zip(kept, axes):
        m = mats[i]
        first, last = window_steps(run.head_load, window=window)
        image = a.imshow(m.to_numpy(dtype="float64"), cmap="viridis", vmin=0.0, vmax=vmax,
                         aspect="auto", interpolation="nearest")
        a.grid(False)
        a.set_xticks(range(m.shape[1]), [str(h) for h in m.columns])
        a.set_yticks(range(m.shape[0]), [str(l) for l in m.index])
        a.set_xlabel(unit)
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
            fig.colorbar(image, cax=cax, label=f"fraction of tokens routed to {unit}")
        else:
            fig.colorbar(image, ax=list(axes), label=f"fraction of tokens routed to {unit}")
    what = {"all": "whole run", "last": "last 10% of steps"}.get(window) or f"last {float(window):.0%} of steps"
    title = reword(f"Head load per layer and head (mean over {what})", unit)
    if any_dead and own_figure:
        fig.text(0.5, 0.02, reword("red frame: dead head (load < 1/(10 H))", unit), ha="center", va="bottom",
                 color=LIMIT_COLOR, fontsize=RC["legend.fontsize"])
    if own_figure:
        finish(fig, title + (f": {kept[0][1].name}" if n == 1 else ""), [])
    return axes
