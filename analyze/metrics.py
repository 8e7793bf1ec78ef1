"""Routing metrics for the report: numbers the research literature reads off a routed model,
computed from telemetry the run already has (no rule, no threshold: the findings judge).

Per layer, over the final window of the run (the final fifth of the logged steps, the window the
head rules judge):
- `load_cv`: coefficient of variation (std / mean) of the per-head mean loads (MoE practice:
  0 = perfectly even);
- `max_violation`: (max load - mean load) / mean load, how far the busiest head is over an even
  share (Switch / GShard);
- `dead_head_fraction`: share of heads whose part of the load is below 1/(10 H) (ROUTING.md);
- `complexity_loss_corr`, `heads_loss_corr`: mean over the window of the engine's per-step rank
  correlations of complexity / head count with the token LM loss (None: not logged, e.g. a log
  older than the field, or a router without complexity).
Under `moh` the shared heads (always on) are left out of the load metrics: only routed heads
compete for load. A dense run routes nothing: its load metrics are None with that reason.
"""

from __future__ import annotations

import numpy as np

from moh import schema

from .rules.context import Context
from .rules.heads import DEAD_HEAD_SHARE, HEAD_WINDOW_FRACTION, _final_loads, _routed, final_window
from .run import Run

FIELDS = ("load_cv", "max_violation", "dead_head_fraction") + schema.ALIGNMENT_STATS


def _late_mean(steps_values: list, layer: int) -> float | None:
    for li, _, v in steps_values:
        if li == layer:
            w = v[final_window(len(v))]
            w = w[np.isfinite(w)]
            return float(w.mean()) if len(w) else None
    return None


def routing_metrics(run: Run) -> dict:
    """{"window", "note", "layers": [{layer, load_cv, max_violation, dead_head_fraction, ...}]}."""
    ctx = Context(run)
    loads = {} if ctx.dense else _final_loads(ctx)
    corr = {f: ctx.series(f) for f in schema.ALIGNMENT_STATS}
    layers = sorted(set(loads) | set(ctx.layer_frames))
    rows = []
    for li in layers:
        row: dict = {"layer": li, "load_cv": None, "max_violation": None, "dead_head_fraction": None}
        v = loads.get(li)
        if v is not None:
            r = _routed(ctx, v)
            if len(r) >= 2 and r.mean() > 0:
                row["load_cv"] = float(r.std() / r.mean())
                row["max_violation"] = float((r.max() - r.mean()) / r.mean())
                share = r / r.sum()
                row["dead_head_fraction"] = float(np.mean(share < DEAD_HEAD_SHARE / len(r)))
        for f in schema.ALIGNMENT_STATS:
            row[f] = _late_mean(corr[f], li)
        rows.append(row)
    note = ("dense: every head on every token, nothing is routed" if ctx.dense else
            "moh: routed heads only (shared heads are always on)" if ctx.router == "moh" else "")
    return {"window": f"final {100 * HEAD_WINDOW_FRACTION:g}% of the logged steps", "note": note, "layers": rows}


def load_spread(v: np.ndarray) -> float | None:
    """How far a layer's routed loads `v` (fraction of tokens using each unit) are from collapse:
    0 when all the load sits on as few units as a token uses, 1 when it is spread evenly.

    With m = sum(v) units per token and shares s = v / m (each at most 1 / m), the effective
    number of units exp(-sum s log s) lies in [m, H]; the spread is its place in that range.
    None where nothing can collapse (every unit on every token, as in a dense layer)."""
    H, m = len(v), float(v.sum())
    if H < 2 or m <= 0 or H - m < 1e-9:
        return None
    s = v[v > 0] / m
    effective = float(np.exp(-(s * np.log(s)).sum()))
    return min(1.0, max(0.0, (effective - m) / (H - m)))


def layer_values(run: Run, name: str) -> dict[int, float | None]:
    """Per layer, one routing metric over the final window: a `routing_metrics` field
    (load_cv, max_violation, dead_head_fraction, an alignment mean) or `load_spread`."""
    if name == "load_spread":
        ctx = Context(run)
        loads = {} if ctx.dense else _final_loads(ctx)
        return {li: load_spread(_routed(ctx, v)) for li, v in sorted(loads.items())}
    return {row["layer"]: row.get(name) for row in routing_metrics(run)["layers"]}


LAYER_METRICS = FIELDS + ("load_spread",)  # what `layer_values` knows
