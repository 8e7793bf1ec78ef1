"""Success criteria: the reference "Expected vs Actual" table as data, evaluated on a `Run`.

A criterion is a metric, a window, a target and where it applies (per layer, per phase); its
result has a status `pass | fail | warn | missing`. The defaults live in `default_criteria.toml`
(next to this file, documented there); a user file is merged over them (`load_criteria`).

Decisions worth knowing:
- `missing` means "could not be judged" (metric not logged, no evals). It does not fail the
  verdict; the report says so plainly. A routing stat that is absent is a *fail* of
  `statistics_logged`, though: that is what that criterion is for.
- Each criterion declares where it applies: `routers` (router kinds) and `sources` (log sources).
  Elsewhere its result is `n/a` with the reason (status missing, applicable False), never a fail:
  a top-k router has no threshold to judge, a dense baseline no routing at all. `by_router`
  tables adjust a criterion per router kind (the stats a `moh` router has are not an adaptive
  router's), so a run is judged against the criteria set of its own router (`criteria_set`).
- Criteria read the log's declared semantics: a head figure that is a soft-weight sum cannot pass
  "average heads" (pass becomes warn, with the reason); a post-clip gradient norm is flagged.
- float32 per-layer stats are compared with a 1e-6 relative tolerance, so 0.8 stored as
  0.80000001 is not a miss.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from moh import schema

from .criteria_spec import (DEFAULT_CRITERIA_PATH, GENERIC_CRITERIA_PATH, STATUSES, CriteriaError, Criterion,
                            Result, _TOL, default_target, load_criteria)
from .groupscan import counts_until
from .run import Run

__all__ = ["Criterion", "Result", "CriteriaError", "load_criteria", "evaluate", "verdict",
           "criteria_set", "default_target", "DEFAULT_CRITERIA_PATH", "GENERIC_CRITERIA_PATH", "STATUSES",
           "default_path", "criteria_for"]


def default_path(run: Run) -> Path:
    """The default criteria file `run` is judged by: the generic set for a log whose run_start
    names a producer other than `moh train` (moh.monitor.Recorder on a user's model writes
    "moh.monitor"; `Run.generic`), else the engine's. Logs without a producer (moh train before
    the field existed, imported reference logs) get the engine's."""
    return GENERIC_CRITERIA_PATH if run.generic else DEFAULT_CRITERIA_PATH


def criteria_for(run: Run, path: str | Path | None = None) -> list[Criterion]:
    """The criteria `run` is judged by: its default set (`default_path`), with the user file at
    `path` (if any) merged over it."""
    return load_criteria(path, default_path(run))


# ---- evaluation ----------------------------------------------------------------------------


class _Index:
    """Numpy views of a run's frames and their (phase, layer) row groups, built once per evaluate().

    Why: a 200,000-step, 8-layer run has 1.6 M layer rows; slicing DataFrames per criterion,
    phase and layer copies them dozens of times. Row-index arrays and float64 columns are cheap.
    """

    def __init__(self, run: Run):
        self.run = run
        self._cols: dict[tuple[str, str], np.ndarray] = {}
        self._groups: dict[tuple[str, str], list] = {}

    def frame(self, name: str) -> pd.DataFrame:
        return getattr(self.run, name)

    def col(self, frame: str, name: str) -> np.ndarray:
        key = (frame, name)
        if key not in self._cols:
            f = self.frame(frame)
            self._cols[key] = (f[name].to_numpy(np.float64, na_value=np.nan) if name in f
                               else np.full(len(f), np.nan))
        return self._cols[key]

    def has(self, frame: str, name: str) -> bool:
        f = self.frame(frame)
        return name in f and bool(np.isfinite(self.col(frame, name)).any() or f[name].notna().any())

    def phase_names(self, frame: str) -> list[str]:
        f = self.frame(frame)
        if "phase" not in f:
            return []
        ph = f["phase"]
        return [str(x) for x in (ph.cat.categories if isinstance(ph.dtype, pd.CategoricalDtype) else pd.unique(ph.dropna()))
                if (ph == x).any()]

    def groups(self, frame: str, phases: str, per_layer: bool) -> list[tuple[str | None, int | None, np.ndarray]]:
        """(phase, layer, row indices in step order) pieces a criterion is judged on, in run order."""
        key = (frame, phases, per_layer)
        if key in self._groups:
            return self._groups[key]
        f = self.frame(frame)
        n = len(f)
        segs: list[tuple[str | None, np.ndarray]] = [(None, np.arange(n))]
        names = self.phase_names(frame)
        if phases != "all" and names:
            col = f["phase"]
            if isinstance(col.dtype, pd.CategoricalDtype):  # compare small integer codes, not objects
                cats = [str(x) for x in col.cat.categories]
                codes = col.cat.codes.to_numpy()
                segs = [(p, np.nonzero(codes == cats.index(p))[0] if p in cats else np.zeros(0, np.int64))
                        for p in names]
            else:
                ph = col.astype(object).to_numpy()
                segs = [(p, np.nonzero(ph == p)[0]) for p in names]
            if phases == "last":
                segs = segs[-1:]
        out = []
        if per_layer and "layer" in f:
            layer = f["layer"].to_numpy()
            for p, idx in segs:
                li = layer[idx]
                order = np.argsort(li, kind="stable")
                sorted_l = li[order]
                for lv in np.unique(sorted_l):
                    a, b = np.searchsorted(sorted_l, lv, "left"), np.searchsorted(sorted_l, lv, "right")
                    out.append((p, int(lv), idx[order[a:b]]))
        else:
            out = [(p, None, idx) for p, idx in segs]
        self._groups[key] = out
        return out

    def source(self, metric: str) -> tuple[str, str] | None:
        """(frame, column) where `metric` lives, or None when not logged."""
        if metric.startswith("eval."):
            return ("evals", metric[5:]) if self.has("evals", metric[5:]) else None
        for frame in ("layers", "steps"):
            if self.has(frame, metric):
                return frame, metric
        return None


def _window(c: Criterion, values: np.ndarray) -> float:
    """Apply the criterion's window to one series (already in step order)."""
    if len(values) == 0:
        return math.nan
    if c.window == "final":
        return float(values[-1])
    if c.window == "last":
        tail = values[-c.n:]
        tail = tail[~np.isnan(tail)]
        return float(tail.mean()) if len(tail) else math.nan
    if c.window == "last_over_first":  # a quarter of a short run at most, so the ends do not overlap
        if np.isinf(values).any():
            return math.nan
        v = values[~np.isnan(values)]
        if len(v) < 2:
            return math.nan
        k = max(1, min(c.n, len(v) // 4))
        first = float(v[:k].mean())
        return float(v[-k:].mean()) / first if first > 0 else math.nan
    if c.window == "spike_ratio":
        rest = _after_warmup(c, values)
        if not len(rest) or not np.isfinite(rest).all():
            # NaN stands for null too, but a norm logged on some steps is logged on all (as the
            # nonfinite rule reads it): a non-finite norm after warmup is judged a failure below
            return math.nan
        med = float(np.median(rest))
        return float(rest.max()) / med if med > 0 else math.nan
    if c.window == "max_after_warmup":
        rest = _after_warmup(c, values)
        rest = rest[~np.isnan(rest)]
        return float(rest.max()) if len(rest) else math.nan
    raise AssertionError(c.window)


def _after_warmup(c: Criterion, values: np.ndarray) -> np.ndarray:
    """The values after the criterion's warmup (a share of the steps when < 1, else a count);
    the last value alone when the warmup covers them all."""
    skip = int(len(values) * c.warmup) if c.warmup < 1 else int(c.warmup)
    return values[skip:] if skip < len(values) else values[-1:]


def _tol(x: float) -> float:
    return _TOL * max(1.0, abs(x))


def _within(c: Criterion, lo: float, hi: float) -> bool:
    ok = True
    if c.target_min is not None:
        ok &= lo >= c.target_min - _tol(c.target_min)
    if c.target_max is not None:
        ok &= hi <= c.target_max + _tol(c.target_max)
    return bool(ok)


def _judge_value(c: Criterion, ix: _Index, frame: str, col: str, rows: np.ndarray) -> tuple[str, Any, str]:
    vals = ix.col(frame, col)[rows]
    if c.window == "every_step":
        lo_col = c.min_metric if c.min_metric and ix.has(frame, c.min_metric) else col
        hi_col = c.max_metric if c.max_metric and ix.has(frame, c.max_metric) else col
        lo_v, hi_v = ix.col(frame, lo_col)[rows], ix.col(frame, hi_col)[rows]
        if np.isnan(lo_v).all() or np.isnan(hi_v).all():
            return "missing", None, "no values in this window"
        lo, hi = float(np.nanmin(lo_v)), float(np.nanmax(hi_v))
        if c.target_min is not None and c.target_max is not None:
            value: Any = [lo, hi]
        else:
            value = lo if c.target_min is not None else hi
        if _within(c, lo, hi):
            return "pass", value, ""
        bad = np.zeros(len(rows), dtype=bool)
        if c.target_min is not None:
            bad |= lo_v < c.target_min - _tol(c.target_min)
        if c.target_max is not None:
            bad |= hi_v > c.target_max + _tol(c.target_max)
        where = np.nonzero(bad)[0]
        steps = ix.col(frame, "step")[rows]
        return "fail", value, f"outside the target at {len(where)} logged step(s), first at step {int(steps[where[0]])}"
    v = _window(c, vals)
    if math.isnan(v):
        if len(vals) and not np.isnan(vals).all():
            return "fail", v, "non-finite value in the window"
        return "missing", None, "no values in this window"
    return ("pass" if _within(c, v, v) else "fail"), v, ""


def _eval_value(c: Criterion, ix: _Index) -> list[Result]:
    metric = c.metric or ""
    src = ix.source(metric)
    if src is None and c.fallback:
        metric = c.fallback
        src = ix.source(metric)
    if src is None:
        why = "no eval records" if (c.metric or "").startswith("eval.") and not len(ix.run.evals) else \
            f"'{c.metric}' not in this log"
        return [_missing(c, why, metric=c.metric)]
    frame, col = src
    out = []
    for phase, layer, rows in ix.groups(frame, c.phases, per_layer=frame == "layers"):
        status, value, detail = _judge_value(c, ix, frame, col, rows)
        out.append(_result(c, status, value, detail, layer=layer, phase=phase, metric=metric))
    return out


_LAYER_METRICS = set(schema.LAYER_STATS) | {"head_load"}


def _step_metric_state(ix: _Index, m: str) -> str:
    """'absent', 'zero' or 'ok' for a step-level column (loss, grad_norm, grad.router, ...)."""
    v = ix.col("steps", m)
    v = v[~np.isnan(v)]
    if not len(v):
        return "absent"
    return "ok" if np.any(v != 0) else "zero"


def _stats_logged(c: Criterion, ix: _Index) -> list[Result]:
    """Every stat of `metrics` logged and not identically 0 (except `zero_ok` ones): per layer for
    layer stats; step-level columns (loss, grad.router) are judged once and shared by the layers."""
    run = ix.run
    layer_metrics = [m for m in c.metrics if m in _LAYER_METRICS]
    step_state = {m: _step_metric_state(ix, m) for m in c.metrics if m not in _LAYER_METRICS}

    def judged(states: dict[str, str], model_wide: list[str], layer_no: int | None) -> Result:
        absent = [m for m in c.metrics if states.get(m) == "absent"]
        zero = [m for m in c.metrics if states.get(m) == "zero" and m not in c.zero_ok]
        ok = len(c.metrics) - len(absent) - len(zero)
        parts = ([f"absent: {', '.join(absent)}"] if absent else []) + \
                ([f"identically 0: {', '.join(zero)}"] if zero else [])
        status = "pass" if not parts else "fail"
        zero_fine = [m for m in c.zero_ok if states.get(m) == "zero"]
        if zero_fine:
            parts.append(f"0 as expected for a {run.router} router: {', '.join(zero_fine)}")
        if model_wide:
            parts.append(f"model-wide only: {', '.join(model_wide)}")
        return _result(c, status, f"{ok}/{len(c.metrics)}", "; ".join(parts), layer=layer_no)

    if not layer_metrics:
        return [judged(step_state, [], None)]
    if not len(run.layers):
        return [_result(c, "fail", 0, "no per-layer statistics in the log")]
    wide = _model_wide(run)
    layer = run.layers["layer"].to_numpy()
    groups = ix.groups("layers", "all", per_layer=True)
    wanted = np.array([li for _, li, _ in groups])
    # Per layer: is a metric ever logged (not NaN), and ever non-zero? Settled from a prefix of the
    # column on a healthy run (`counts_until`); only a failing layer costs a full scan.
    logged: dict[str, np.ndarray] = {}
    nonzero: dict[str, np.ndarray] = {}
    for m in layer_metrics:
        if m == "head_load":
            if not len(run.head_load):
                continue
            v, g = run.head_load["load"].to_numpy(), run.head_load["layer"].to_numpy()  # float32, no copy
        elif m in run.layers:
            v, g = run.layers[m].to_numpy(), layer
            if v.dtype.kind != "f":
                v = ix.col("layers", m)
        else:
            continue
        logged[m] = counts_until(lambda s, v=v: ~np.isnan(v[s]), g, wanted)
        nonzero[m] = counts_until(lambda s, v=v: (v[s] != 0) & ~np.isnan(v[s]), g, wanted)
    out = []
    for _, layer_no, _ in groups:
        states, model_wide = dict(step_state), []
        for m in layer_metrics:
            n = logged[m][layer_no] if m in logged and layer_no < len(logged[m]) else 0
            if not n and m in wide and m != "head_load":
                v = wide[m]
                v = v[~np.isnan(v)]
                model_wide.append(m)
                states[m] = "absent" if not len(v) else ("zero" if not np.any(v != 0) else "ok")
                continue
            if not n:
                states[m] = "absent"
            elif not (nonzero[m][layer_no] if layer_no < len(nonzero[m]) else 0):
                states[m] = "zero"
            else:
                states[m] = "ok"
        out.append(judged(states, model_wide, layer_no))
    return out


def _changes(c: Criterion, ix: _Index) -> list[Result]:
    run = ix.run
    wide = _model_wide(run)
    loads = _load_ranges(run) if "head_load" in c.metrics else {}
    present = [m for m in c.metrics if ix.has("layers", m) or m in wide or (m == "head_load" and loads)]
    if not present:
        return [_missing(c, f"none of {', '.join(c.metrics)} in this log")]
    groups = ix.groups("layers", "all", per_layer=True) if len(run.layers) else [(None, None, np.zeros(0, np.int64))]
    out = []
    for _, layer, rows in groups:
        changes: dict[str, float | None] = {}
        still, absent = [], []
        for m in c.metrics:
            if m == "head_load":  # per-unit series: the largest change of any unit's load
                changes[m] = loads.get(layer)
                if changes[m] is None:
                    absent.append(m)
                elif changes[m] <= c.min_change:
                    still.append(m)
                continue
            v = ix.col("layers", m)[rows] if m in run.layers else np.zeros(0)
            v = v[np.isfinite(v)]
            if not len(v) and m in wide:  # imported logs: one model-wide value per step
                v = wide[m][np.isfinite(wide[m])]
            if not len(v):
                absent.append(m)
                changes[m] = None
                continue
            changes[m] = float(v.max() - v.min())
            if changes[m] <= c.min_change:
                still.append(m)
        if still:
            status, detail = "fail", f"constant over the run: {', '.join(still)}"
        elif absent:
            status, detail = "warn", f"not logged: {', '.join(absent)}"
        else:
            status, detail = "pass", ""
        out.append(_result(c, status, changes, detail, layer=layer))
    return out


def _routing_metric(c: Criterion, ix: _Index) -> list[Result]:
    """A per-layer routing metric of the final window (analyze.metrics: load CV, max violation,
    dead-unit fraction, load spread) against the target."""
    from .metrics import LAYER_METRICS, layer_values

    if c.metric not in LAYER_METRICS:
        return [_missing(c, f"unknown routing metric '{c.metric}' (known: {', '.join(LAYER_METRICS)})")]
    values = layer_values(ix.run, c.metric)
    if not values:
        return [_missing(c, "no per-layer loads in this log")]
    out = []
    for layer, v in values.items():
        if v is None:
            out.append(_result(c, "missing", None, "does not apply to this layer's routing", layer=layer))
        else:
            out.append(_result(c, "pass" if _within(c, v, v) else "fail", v, "", layer=layer))
    return out


def _load_ranges(run: Run) -> dict[int, float]:
    """Per layer, the largest change of any unit's load over the run (max - min of its series)."""
    hl = run.head_load
    if not len(hl) or "load" not in hl.columns:
        return {}
    g = hl.groupby(["layer", "head"], observed=True)["load"]
    rng = (g.max() - g.min()).groupby(level="layer", observed=True).max()
    return {int(li): float(v) for li, v in rng.items() if np.isfinite(v)}


def _model_wide(run: Run) -> dict[str, np.ndarray]:
    """Layer stats an imported log carries once per step for the whole model (semantics
    "model_wide_stats"), as float arrays in step order."""
    names = run.semantics.get("model_wide_stats") or ()
    out = {}
    for m in names if isinstance(names, (list, tuple)) else ():
        if isinstance(m, str) and m in run.steps and run.steps[m].notna().any():
            out[m] = run.steps[m].to_numpy(np.float64, na_value=np.nan)
    return out


def _result(c: Criterion, status: str, value: Any, detail: str = "", *, layer: int | None = None,
            phase: str | None = None, metric: str | None = None) -> Result:
    if status == "fail" and c.severity == "warn":
        status = "warn"
    return Result(name=c.name, label=c.label, status=status, value=value, target=c.target_text,
                  layer=layer, phase=phase, window=c.window_text(), metric=metric or c.metric,
                  detail=detail)


def _missing(c: Criterion, why: str, *, metric: str | None = None, applicable: bool = True) -> Result:
    return Result(name=c.name, label=c.label, status="missing", value=None, target=c.target_text,
                  window=c.window_text(), metric=metric or c.metric, detail=why, applicable=applicable)


def _semantics(c: Criterion, run: Run, results: list[Result]) -> list[Result]:
    """Qualify results by what the logged numbers mean (declared in run_start semantics)."""
    sem = {**schema.DEFAULT_SEMANTICS, **run.semantics}
    metrics = {c.metric, c.fallback} if c.kind == "value" else set()
    out = []
    for r in results:
        if r.status == "missing":
            out.append(r)
            continue
        notes, status = [], r.status
        if metrics & {"heads_mean", "heads_min", "heads_max"} and sem.get("heads") == schema.HEADS_SOFT_WEIGHT_SUM:
            notes.append("heads are a soft-weight sum, not a hard head count")
            if status == "pass":
                status = "warn"
        if r.metric == "grad_norm":
            if sem.get("grad_norm") == schema.GRAD_NORM_POST_CLIP:
                clip = sem.get("grad_norm_clip")
                notes.append("logged norm is after clipping" + (f" at {clip:g}" if isinstance(clip, (int, float)) else ""))
            if sem.get("grad_norm_reduction") == "epoch_mean":
                notes.append("an epoch mean (single-step spikes are hidden)")
        if notes:
            r = replace(r, status=status, detail="; ".join([d for d in [r.detail] if d] + notes))
        out.append(r)
    return out


def evaluate(run: Run, criteria: list[Criterion] | None = None) -> list[Result]:
    """One result per criterion, layer and phase it applies to."""
    criteria = load_criteria() if criteria is None else criteria
    source = run.meta.get("source", schema.SOURCE_MOH)
    ix = _Index(run)
    results: list[Result] = []
    for c0 in criteria:
        if not c0.enabled:
            continue
        c = c0.for_router(run.router)
        why = c.not_applicable(run.router, source) or \
            (None if c.enabled else f"n/a: switched off for {run.router} routers")
        if why:
            results.append(_missing(c, why, applicable=False))
            continue
        if c.kind == "stats_logged":
            rs = _stats_logged(c, ix)
        elif c.kind == "changes":
            rs = _changes(c, ix)
        elif c.kind == "routing_metric":
            rs = _routing_metric(c, ix)
        else:
            rs = _eval_value(c, ix)
        results.extend(_semantics(c, run, rs))
    return results


def criteria_set(run: Run, criteria: list[Criterion] | None = None, path: str | Path | None = None) -> dict:
    """Which criteria set judged `run` and why: its router kind (from run_start.model.router) and
    log source select each criterion's `by_router` variant and its n/a cases."""
    criteria = criteria_for(run, path) if criteria is None else criteria
    router, source = run.router, run.meta.get("source", schema.SOURCE_MOH)
    applied = [c.name for c in criteria if c.enabled and c.for_router(router).enabled
               and not c.for_router(router).not_applicable(router, source)]
    na = [c.name for c in criteria if c.enabled and c.name not in applied]
    adjusted = [c.name for c in criteria if c.enabled and router in dict(c.by_router)]
    reason = (f"run_start.model.router = {router}" if router else "the log names no router: the "
              "adaptive set's criteria without by_router variants")
    if run.generic:
        reason = (f"generic criteria: run_start.producer = {run.meta.get('producer')}, not "
                  f"{schema.PRODUCER_TRAIN}; " + reason)
    return {"router": router, "source": source, "file": str(path) if path else "default",
            "reason": reason + (f"; log source {source}" if source != schema.SOURCE_MOH else ""),
            "applied": applied, "not_applicable": na, "adjusted_for_router": adjusted}


def verdict(results: list[Result], findings: list | None = None) -> str:
    """'fail' when any criterion failed or any finding is an error; otherwise 'pass'."""
    if any(r.status == "fail" for r in results):
        return "fail"
    if any(getattr(f, "severity", None) == "error" for f in findings or ()):
        return "fail"
    return "pass"
