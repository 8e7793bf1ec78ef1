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
from analyze.run import Run

# Which figure shows the series a finding is about. A finding whose code is not here and whose
# statistic no figure draws (pred_norm, entropy), or whose figure could not be drawn, is listed
# with the findings that have no figure.
FIGURE_OF_CODE = {
    "router_grad_zero": "grad_norms", "grad_explosion": "grad_norms", "clip_saturation": "grad_norms",
    "loss_not_converging": "loss", "loss_divergence": "loss", "nonfinite": "loss",
    "aux_dominates": "loss", "vacuous_aux": "loss",
    "head_collapse": "heads", "dead_heads": "heads", "load_imbalance": "head_load",
}
# The statistics rules (silent_zero, missing_stat, ...) name their statistic in evidence["stat"].
_STAT_FIGURE = (("threshold", "thresholds"), ("complexity", "complexity"), ("head_load", "head_load"),
                ("heads", "heads"), ("grad", "grad_norms"))

# Figures whose x axis is the step: evidence steps can be marked on them.
_STEP_AXIS = frozenset(FAMILIES) - {"head_load"}
EVIDENCE_COLOR = "tab:red"


def figure_of(finding) -> str | None:
    """The family whose figure shows `finding`'s series, or None."""
    if finding.code in FIGURE_OF_CODE:
        return FIGURE_OF_CODE[finding.code]
    stat = str(finding.evidence.get("stat") or "")  # the subject; the message may name others
    for needle, family in _STAT_FIGURE:
        if needle in (stat or finding.message):
            return family
    return None


def evidence_steps(findings) -> list[float]:
    """The distinct steps the findings' evidence names (each finding lists at most 10)."""
    steps = set()
    for f in findings:
        for s in f.evidence.get("steps") or ():
            if isinstance(s, (int, float)) and not isinstance(s, bool):
                steps.add(float(s))
    return sorted(steps)


def figure_svg(runs: list[Run], family: str, findings=()) -> tuple[str | None, list[str]]:
    """(`<svg ...>` text, or None when no run has the family's data; the plot warnings).

    The evidence steps of `findings` are marked as red dashed lines on a step-axis figure.
    """
    rc = {**RC, "svg.fonttype": "none", "svg.hashsalt": f"moh-{family}"}
    with warnings.catch_warnings(record=True) as caught, matplotlib.rc_context(rc):
        warnings.simplefilter("always", PlotWarning)
        try:
            axes = FAMILIES[family](runs)
        except MissingDataError as e:
            return None, [str(e)]
        fig = axes[0].figure
        steps = evidence_steps(findings) if family in _STEP_AXIS else []
        for ax in axes:
            for i, s in enumerate(steps):
                ax.axvline(s, color=EVIDENCE_COLOR, linestyle="--", linewidth=0.9, alpha=0.8,
                           label="finding evidence" if i == 0 and ax is axes[0] else None)
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
