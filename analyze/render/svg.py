"""A figure family as an inline `<svg>` element for an HTML page.

Text stays text (`svg.fonttype = 'none'`): the page is searchable and a run name in a title
can be selected and copied. Matplotlib escapes every string it writes into the SVG, so a log's
markup in a run name stays text. Each figure gets its own id salt, so the clip-path ids of two
figures on one page never collide.
"""

from __future__ import annotations

import io
import re
import warnings

import matplotlib

from analyze.plots import FAMILIES, RC, MissingDataError, PlotWarning
from analyze.plots.markers import family_of, mark
from analyze.run import Run


def figure_of(finding) -> str | None:
    """The family whose figure shows `finding`'s series (the same choice as `moh plot --findings`)."""
    return family_of(finding.to_dict())


def figure_svg(runs: list[Run], family: str, marks=()) -> tuple[str | None, list[str]]:
    """(`<svg ...>` text, or None when no run has the family's data; the plot warnings).

    `marks`: (Finding, its Run) pairs; each is marked at its evidence steps on its layer's panel
    (analyze/plots/markers.py, as `moh plot --findings` does).
    """
    rc = {**RC, "svg.fonttype": "none", "svg.hashsalt": f"moh-{family}"}
    with warnings.catch_warnings(record=True) as caught, matplotlib.rc_context(rc):
        warnings.simplefilter("always", PlotWarning)
        try:
            axes = FAMILIES[family](runs)
        except MissingDataError as e:
            return None, [str(e)]
        fig = axes[0].figure
        mark(axes, family, [(f.to_dict(), run) for f, run in marks], runs)
        buf = io.StringIO()
        fig.savefig(buf, format="svg")
        fig.clear()
    messages = [str(w.message) for w in caught if issubclass(w.category, PlotWarning)]
    return _element(buf.getvalue()), messages


def _element(document: str) -> str:
    """The `<svg>` element of an SVG document (no XML declaration or DOCTYPE inside HTML)."""
    start = document.find("<svg")
    svg = document[start:]
    # Scale with the page: keep the viewBox, let CSS set the size.
    return re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1', svg, count=1)
