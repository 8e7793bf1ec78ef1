"""Findings on the figures (`moh plot --findings`): a marker at every step a finding rests on,
on the figure of the series it is about, so a person sees where the rule looked.

A finding's series comes from its code, or for the generic rules (a stat that is missing,
constant, zero, redundant; a baseline deviation) from its evidence ("stat" / "series"). On
figures with a step axis each evidence step gets a dotted vertical line in the severity's colour
and the code above the panel; on a layer figure only the finding's layer panel is marked (a
model-wide finding marks every panel). The head-load heatmap has heads, not steps, on its axis:
there the codes are listed in a corner with the window they judged.

Artists carry gid "finding:<code>" (tests and SVG readers can find them).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.transforms import blended_transform_factory

from analyze.run import Run

from .common import time_unit, with_x

SEVERITY_COLORS = {"error": "tab:red", "warning": "darkorange", "info": "tab:gray"}

# the figure family each rule's series is drawn on
FAMILY_OF_CODE = {
    "router_grad_zero": "grad_norms", "grad_explosion": "grad_norms", "clip_saturation": "grad_norms",
    "grad_norm_rising": "grad_norms",
    "loss_not_converging": "loss", "loss_divergence": "loss", "loss_plateau": "loss", "nonfinite": "loss",
    "aux_dominates": "loss", "vacuous_aux": "loss",
    "head_collapse": "heads", "uniform_allocation": "heads", "budget_miss": "heads",
    "dead_heads": "head_load", "load_imbalance": "head_load",
    "threshold_pinned": "thresholds",
    "complexity_uninformative": "complexity", "predictor_growth": "complexity",
}


def family_of(finding: dict) -> str | None:
    """The figure family a finding (its `to_dict()` form) belongs on; None: no figure shows it."""
    ev = finding.get("evidence") or {}
    series = ev.get("series") or ev.get("stat")
    if finding["code"] in FAMILY_OF_CODE and not (finding["code"] == "nonfinite" and series):
        return FAMILY_OF_CODE[finding["code"]]
    if not isinstance(series, str):
        return None
    for prefix, family in (("threshold", "thresholds"), ("complexity", "complexity"), ("heads", "heads"),
                           ("head_load", "head_load"), ("grad", "grad_norms"), ("loss", "loss"),
                           ("lm_loss", "loss"), ("aux", "loss")):
        if series.startswith(prefix):
            return family
    return None


def _panel_layer(title: str) -> int | None:
    """The layer a layer-figure panel shows ("layer 3", "layer 3 (L3)"), else None."""
    parts = title.split()
    if len(parts) >= 2 and parts[0] == "layer" and parts[1].isdigit():
        return int(parts[1])
    return None


def mark(axes: np.ndarray, family: str, marks: Sequence[tuple[dict, Run]], runs: Sequence[Run],
         x: str = "step") -> int:
    """Draw the findings of `marks` ((finding dict, its run)) that belong on `family`'s figure.
    Returns the number of findings drawn."""
    mine = [(f, run) for f, run in marks if family_of(f) == family]
    if not mine:
        return 0
    axes = [a for a in np.ravel(axes) if a.get_visible()]
    if family == "head_load":
        _note(axes[0], mine)
        return len(mine)
    scale = time_unit(runs)[0] if x == "elapsed" else 1.0
    for f, run in mine:
        steps = [s for s in (f.get("evidence") or {}).get("steps", []) if isinstance(s, (int, float))]
        if not steps:
            continue
        xs = with_x(pd.DataFrame({"step": np.asarray(steps, dtype=np.int64)}), run, x, scale)["_x"].to_numpy()
        xs = xs[np.isfinite(xs)]
        color = SEVERITY_COLORS.get(f["severity"], "tab:gray")
        spans = _spans(f.get("evidence") or {}, run, x, scale)
        for a in axes:
            layer = _panel_layer(a.get_title())
            if f.get("layer") is not None and layer is not None and layer != f["layer"]:
                continue
            for xv in xs:
                a.axvline(xv, color=color, lw=0.9, ls=":", alpha=0.8, zorder=5, gid=f"finding:{f['code']}")
            for x0, x1 in spans:  # the window a rule judged, where it names one
                a.axvspan(x0, x1, color=color, alpha=0.08, lw=0, zorder=0, gid=f"finding:{f['code']}")
            a.text(xs[0], 1.0, f["code"], transform=blended_transform_factory(a.transData, a.transAxes),
                   color=color, fontsize=6, rotation=90, va="top", ha="right", gid=f"finding:{f['code']}")
    return len(mine)


def _spans(ev: dict, run: Run, x: str, scale: float) -> list[tuple[float, float]]:
    """Step windows named in evidence ("windows": [[a, b], ...], or window_first/last_step), in x units."""
    pairs = [w for w in ev.get("windows") or [] if isinstance(w, list) and len(w) == 2]
    if isinstance(ev.get("window_first_step"), int) and isinstance(ev.get("window_last_step"), int):
        pairs.append([ev["window_first_step"], ev["window_last_step"]])
    if not pairs:
        return []
    flat = np.asarray(pairs, dtype=np.int64).reshape(-1)
    xs = with_x(pd.DataFrame({"step": flat}), run, x, scale)["_x"].to_numpy().reshape(-1, 2)
    return [(float(a), float(b)) for a, b in xs if np.isfinite(a) and np.isfinite(b)]


def _note(a, mine: list[tuple[dict, Run]]) -> None:
    lines = []
    for f, run in mine:
        ev = f.get("evidence") or {}
        span = ev.get("steps") or []
        where = f"layer {f['layer']}" if f.get("layer") is not None else "model-wide"
        window = f", steps {span[0]}-{span[-1]}" if len(span) >= 2 else ""
        lines.append(f"{f['severity']}: {f['code']} ({run.name}, {where}{window})")
    a.text(0.01, 0.99, "\n".join(lines), transform=a.transAxes, fontsize=6, va="top", ha="left",
           color=SEVERITY_COLORS.get(mine[0][0]["severity"], "tab:gray"),
           bbox={"facecolor": "white", "alpha": 0.8, "lw": 0}, gid="finding:note")
