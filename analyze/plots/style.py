"""House style of every figure: targets drawn as bands and lines, sizes, fonts, colours, and the
errors a plot function raises or warns with."""

from __future__ import annotations

from analyze.criteria import default_target

# Targets drawn as bands/lines: the default success criteria's (analyze/default_criteria.toml).
THRESHOLD_TARGET = default_target("threshold_range")
COMPLEXITY_TARGET = default_target("complexity_range")
HEADS_TARGET = default_target("average_heads")
GRAD_NORM_TARGET = default_target("grad_norm")[1]
LOSS_TARGET = default_target("loss")[1]

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
