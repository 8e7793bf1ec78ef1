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

The package, by idea:
    style        targets, sizes, fonts, colours; the errors
    common       helpers every family shares (run selection, x axis, figure layout)
    layer_stats  thresholds, complexity, heads (one panel per layer)
    head_load    the head-load heatmap
    series       gradient norms and losses (one two-panel helper behind both)
    families     FAMILIES: name -> plot function; a new figure is registered here
    markers      findings marked at their evidence steps on the figure of their series
    files        draw one family into a temp file; check the output directory
    pool         draw several families in forked processes
    write        write_figures: draw all, then rename into place (all or nothing)
"""

from analyze.atomic import OutputError

from .families import FAMILIES
from .files import prepare_output_dir
from .head_load import plot_head_load
from .layer_stats import plot_complexity, plot_heads, plot_thresholds
from .pool import usable_cpus
from .series import plot_grad_norms, plot_loss
from .style import (COMPLEXITY_TARGET, DPI, FORMATS, GRAD_NORM_TARGET, HEADS_TARGET, LOSS_TARGET, RC,
                    THRESHOLD_TARGET, X_AXES, MissingDataError, PlotWarning)
from .write import write_figures

__all__ = ["FAMILIES", "FORMATS", "MissingDataError", "OutputError", "PlotWarning", "X_AXES", "plot_complexity",
           "plot_grad_norms", "plot_head_load", "plot_heads", "plot_loss", "plot_thresholds",
           "prepare_output_dir", "usable_cpus", "write_figures", "COMPLEXITY_TARGET", "DPI", "GRAD_NORM_TARGET",
           "HEADS_TARGET", "LOSS_TARGET", "RC", "THRESHOLD_TARGET"]
