"""The JSON documents of `moh report --format json` and `moh compare --format json`.

Their shape is documented in docs/report-json.md and checked against analyze/report.schema.json
(tests/analyze/test_report_json.py). `REPORT_VERSION` changes whenever a field changes meaning
or type, or is removed; a new field does not change it.

Stable types: a criterion's `value` is always an object tagged by `type` (or null), its target
an object with an `op`; display text is in `value_text` / `target_text`. A report's criterion
and a comparison's cell use the same names (`status`, `value`, `value_text`).
"""

from __future__ import annotations

import math
import re
from typing import Any

from analyze.jsonsafe import json_safe

REPORT_VERSION = 1

_COUNT = re.compile(r"^(\d+)/(\d+)$")


def typed_value(v: Any) -> dict | None:
    """A criterion value as a tagged object: number, range, count, changes or text; None stays null."""
    if v is None:
        return None
    if isinstance(v, bool):
        return {"type": "text", "text": str(v)}
    if isinstance(v, (int, float)) or hasattr(v, "dtype"):
        x = float(v)  # NaN / inf: no number (strict JSON); value_text still says "NaN" / "inf"
        return {"type": "number", "value": x} if math.isfinite(x) else None
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return {"type": "range", "min": v[0], "max": v[1]}
    if isinstance(v, dict):
        return {"type": "changes", "changes": dict(v)}
    m = _COUNT.match(str(v))
    if m:
        return {"type": "count", "count": int(m.group(1)), "of": int(m.group(2))}
    return {"type": "text", "text": str(v)}


def target_of(spec) -> dict | None:
    """A criterion's target as an object: {op: "<=" | ">=", value}, {op: "between", min, max},
    {op: "all_logged", metrics} or {op: "changes", min_change, metrics}."""
    if spec is None:
        return None
    if spec.kind == "stats_logged":
        return {"op": "all_logged", "metrics": list(spec.metrics)}
    if spec.kind == "changes":
        return {"op": "changes", "min_change": spec.min_change, "metrics": list(spec.metrics)}
    lo, hi = spec.target_min, spec.target_max
    if lo is not None and hi is not None:
        return {"op": "between", "min": lo, "max": hi}
    return {"op": "<=", "value": hi} if hi is not None else {"op": ">=", "value": lo}


def report_doc(rep) -> dict:
    from analyze.report import format_value

    # the variant that judged this run: a criterion's by_router target where the router has one
    specs = {c.name: c.for_router(rep.run.router) for c in rep.specs}
    criteria = [{
        "name": r.name, "label": r.label, "layer": r.layer, "phase": r.phase, "metric": r.metric,
        "window": r.window, "status": r.status, "applicable": r.applicable,
        "value": typed_value(r.value), "value_text": format_value(r.value),
        "target": target_of(specs.get(r.name)), "target_text": r.target, "detail": r.detail,
    } for r in rep.results]
    return json_safe({
        "report_version": REPORT_VERSION, "kind": "report", "verdict": rep.verdict,
        "run": rep.run_info(),
        "summary": {"criteria": rep.counts, "findings": rep.finding_counts},
        "criteria_set": rep.criteria_set,
        "criteria": criteria,
        "findings": [f.to_dict() for f in rep.findings],
        "metrics": rep.metrics,
        "baseline": rep.baseline,
        "notes": list(rep.run.notes),
    })


def compare_doc(cmp) -> dict:
    def row(r, specs) -> dict:
        cells = [{"status": c.status, "value": None if c.number is None else {"type": "number", "value": c.number},
                  "value_text": c.text, "delta": d} for c, d in zip(r.cells, r.deltas())]
        out = {"name": r.name, "label": r.label, "phase": r.phase, "comparable": r.comparable,
               "meanings": list(r.meanings) or [None] * len(r.cells), "note": r.note, "cells": cells}
        if specs is not None:
            out |= {"target": target_of(specs.get(r.name)), "target_text": r.target}
        return out

    # a criterion's target as the first run that has it was judged (rows show one target)
    specs: dict = {}
    for rep in cmp.reports:
        for c in rep.specs:
            specs.setdefault(c.name, c.for_router(rep.run.router))
    return json_safe({
        "report_version": REPORT_VERSION, "kind": "comparison", "verdict": cmp.verdict,
        "runs": [{"name": rep.run.name, "path": str(rep.run.path), "router": rep.run.router,
                  "verdict": rep.verdict, "semantics": rep.run.semantics,
                  "summary": {"criteria": rep.counts, "findings": rep.finding_counts},
                  "criteria_set": rep.criteria_set} for rep in cmp.reports],
        "criteria": [row(r, specs) for r in cmp.criteria],
        "metrics": [row(r, None) for r in cmp.metrics],
        "findings": [{"code": c, "severity": s, "counts": n} for c, s, n in cmp.findings],
    })
