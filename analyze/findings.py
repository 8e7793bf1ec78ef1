"""Findings: diagnosis rules that read a loaded `Run` and say what is wrong, why, and what to do.

One small function per rule, registered in `RULES` with `@rule`; `find_all(run)` runs them all.
Every rule reads `run.semantics` so its message says what the numbers are (a hard head count or
a soft-weight sum; a gradient norm before or after clipping, per step or an epoch mean). A dense
run gets no routing findings: its routing stats are null by design. Thresholds are the named
constants below, each with the reason for its value; `docs/findings.md` documents every code.

Severity: "error" -- the telemetry or the training is broken (a stat that measures nothing, a
blocked gradient, a diverging loss); "warning" -- likely wrong, look before trusting the run;
"info" -- worth knowing, not a fault. A healthy engine run produces no warning or error.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from moh import schema

from .groupscan import counts_until
from .jsonsafe import json_safe
from .run import Run, layer_block

SEVERITIES = ("error", "warning", "info")

# ---- thresholds ----------------------------------------------------------------------------
MIN_STEPS = 5                # fewer logged values than this: a rule has no evidence either way
ZERO_ATOL = 1e-12            # "identically zero": written as 0 (float32 keeps a real 1e-30 non-zero)
CONSTANT_RTOL = 1e-7         # never changes: range below float32 resolution of its value
DEGENERATE_ATOL = 1e-6       # per-token min == max: below any real spread of a [0, 1] stat
DEGENERATE_WARN_FRACTION = 0.5   # on half the steps: most of the run says nothing per token
REDUNDANT_MIN_STEPS = 8      # an exact affine fit through fewer points proves little
REDUNDANT_SLACK = 1.5        # least squares on rounded data can exceed the rounding bound a bit
REDUNDANT_POWER = 10.0       # y must vary >= 10x the tolerance, or any line fits the noise
GRAD_ZERO_RTOL = 1e-8        # routing grad / total grad below float32 noise: no gradient arrives
GRAD_SPIKE_FACTOR = 10.0     # a step 10x the recent median is a blow-up, not noise
GRAD_SPIKE_ERROR_FACTOR = 100.0
GRAD_SPIKE_WINDOW = 20       # "recent": the previous 20 logged steps
GRAD_TARGET = 2.5            # the success table's bound; spikes that stay below it are harmless
GRAD_GROWTH_FACTOR = 10.0    # a phase ending 10x above its calmest stretch keeps growing
CLIP_TOL = 0.01              # "at the clip value": within 1% (epoch means of clipped norms)
CLIP_SATURATED_FRACTION = 0.5    # clipped on most steps of a phase's second half (early steps
                                 # after init are expected above the clip): the clip sets the step
CLIP_INFO_FRACTION = 0.25
LOSS_MIN_REL_DROP = 0.10     # a phase that lowers its loss by < 10% has not learned
LOSS_TAIL_SHARE = 0.10       # the last tenth of a phase still giving >= 10% of its progress
LOSS_DIVERGE_FACTOR = 1.5    # ending 50% above the best smoothed loss of the phase
LOSS_DIVERGE_MIN_RISE = 0.1  # ... and at least 0.1 nats above it (tiny losses are noisy)
HEAD_WINDOW_FRACTION = 0.2   # collapse / load rules judge the final fifth of the run
HEAD_COLLAPSE_TOL = 0.05     # mean within 0.05 heads of the minimum / maximum
HEAD_COLLAPSE_FRACTION = 0.9
DEAD_HEAD_SHARE = 0.1        # dead: share of the load < 1/(10 H) (ROUTING.md)
LOAD_CV_MAX = 0.5            # coefficient of variation of head loads; Switch-style balance
                             # keeps it well below, one head taking half the load exceeds it
PRED_NORM_TINY = 1e-3        # a zero-initialised predictor: measure growth from 10% of the run
PRED_GROWTH_RATIO = 3.0      # final / initial predictor norm
PRED_STILL_RISING = 0.01     # ... and still rising by >= 1% over the last quarter
AUX_SHARE_MAX = 0.3          # weighted aux >= 30% of the total loss competes with the LM loss

ROUTING_GRAD_GROUPS = ("router", "complexity", "threshold")
# config keys of the aux-loss weights (moh/config.py); a term whose weight is 0 is switched off
AUX_WEIGHT_KEYS = {"load_balance": "lb_weight", "z": "z_weight",
                   "complexity": "complexity_weight", "budget": "budget_weight"}
REDUNDANT_STATS = ("heads_mean", "threshold_mean", "complexity_mean", "entropy")
CONSTANT_STATS = ("heads_mean", "threshold_mean", "complexity_mean", "entropy", "pred_norm")
RANGE_BASES = ("heads", "threshold", "complexity")
NONFINITE_ALERT = re.compile(r"non.?finite|\bnan\b|\binf", re.IGNORECASE)
EVIDENCE_MAX = 10            # values listed in evidence


@dataclass(frozen=True)
class Finding:
    code: str
    severity: str            # "info" | "warning" | "error"
    layer: int | None
    message: str             # one line
    evidence: dict = field(default_factory=dict)   # JSON-safe: steps, values, ...
    action: str = ""

    def to_dict(self) -> dict:
        return {"code": self.code, "severity": self.severity, "layer": self.layer,
                "message": self.message, "evidence": self.evidence, "action": self.action}


# ---- JSON-safe evidence ----------------------------------------------------------------------

def _safe(v):
    return json_safe(v, digits=6)


def _ev(steps=(), values=(), **extra) -> dict:
    steps, values = list(steps), list(values)
    out = {"steps": _safe(steps[:EVIDENCE_MAX]), "values": _safe(values[:EVIDENCE_MAX])}
    if len(steps) > EVIDENCE_MAX:
        out["n_steps"] = len(steps)
    out.update(_safe(extra))
    return out


def _g(x: float) -> str:
    return f"{x:.4g}"


# ---- context: what every rule needs, computed once -----------------------------------------

class _Ctx:
    def __init__(self, run: Run):
        self.run = run
        self.steps = run.steps
        self.sem = run.semantics
        self.config = run.meta.get("config") or {}
        self.source = run.meta.get("source", schema.SOURCE_MOH)
        self.router = run.router
        self.dense = self.router == "dense"
        self.n_heads = run.n_heads
        self.layer_frames, self._block = _layer_frames(run.layers)
        self._layer_cols: dict[tuple[int, str], np.ndarray] = {}
        self._series: dict[str, list] = {}
        self.routing = (not self.dense) and (self.router is not None or bool(self.layer_frames))
        self.final_loads: dict[int, np.ndarray] | None = None
        self.model_wide = [s for s in schema.LAYER_STATS if s in self.steps.columns
                           and self.steps[s].notna().any()]

    # what the numbers are
    @property
    def heads_soft(self) -> bool:
        return self.sem.get("heads") == schema.HEADS_SOFT_WEIGHT_SUM

    def heads_what(self) -> str:
        return ("soft-weight sum per token (not a head count)" if self.heads_soft
                else "hard head count per token")

    @property
    def post_clip(self) -> bool:
        return self.sem.get("grad_norm") == schema.GRAD_NORM_POST_CLIP

    @property
    def epoch_mean(self) -> bool:
        return self.sem.get("grad_norm_reduction") == "epoch_mean"

    def grad_what(self) -> str:
        when = "after clipping" if self.post_clip else "before clipping"
        red = "epoch mean of the" if self.epoch_mean else ""
        return f"{red} total gradient norm {when}".strip()

    def clip(self) -> float | None:
        c = self.sem.get("grad_norm_clip")
        if c is None:
            c = self.config.get("grad_clip")
        try:
            c = float(c) if c is not None else None
        except (TypeError, ValueError):
            c = None
        if c is not None and c > 0 and math.isfinite(c):
            return c
        s = self.steps
        if "grad_norm_clipped" in s.columns and "grad_norm" in s.columns and "grad_norm" in s:
            g, gc = s["grad_norm"].to_numpy(float), s["grad_norm_clipped"].to_numpy(float)
            ok = np.isfinite(g) & np.isfinite(gc) & (gc < g * (1 - 1e-6))
            if ok.any():
                return float(np.median(gc[ok]))
        return None

    def k_min(self) -> float:
        try:
            return float(self.config.get("k_min", 1.0))
        except (TypeError, ValueError):
            return 1.0

    def live_steps(self) -> pd.DataFrame:
        """Step rows not skipped for non-finite values."""
        s = self.steps
        if "skipped" in s.columns:
            return s[~s["skipped"].fillna(0).astype(bool)]
        return s

    def layer_col(self, li: int, name: str) -> np.ndarray:
        """Column `name` of layer `li` as float64, "step" as stored (computed once, read-only:
        rules share it)."""
        key = (li, name)
        v = self._layer_cols.get(key)
        if v is None:
            if self._block is not None:  # every L-th row of the column, converted straight from it
                full = self.run.layers[name].to_numpy()  # as stored: a view, no copy
                rows = full[self._block.index(li)::len(self._block)]
                v = rows.copy() if name == "step" else rows.astype(np.float64)
            else:
                col = self.layer_frames[li][name]
                v = col.to_numpy() if name == "step" else col.to_numpy(float)
            v.flags.writeable = False
            self._layer_cols[key] = v
        return v

    def series(self, stat: str) -> list[tuple[int | None, np.ndarray, np.ndarray]]:
        """(layer, steps, values) for a stat: one per layer that logged it, or one model-wide
        (layer None) when the log carries it as a step-level value (imported logs)."""
        if stat in self._series:
            return self._series[stat]
        out = []
        for li, f in self.layer_frames.items():
            if stat in f.columns:
                v = self.layer_col(li, stat)
                if np.isfinite(v).any():
                    out.append((li, self.layer_col(li, "step"), v))
        if not out and stat in self.model_wide:
            s = self.steps
            out.append((None, s["step"].to_numpy(), s[stat].to_numpy(float)))
        self._series[stat] = out
        return out


def _layer_frames(lay: pd.DataFrame) -> tuple[dict[int, pd.DataFrame], list[int] | None]:
    """One frame per layer, rows in step order, and the repeated block of layer numbers (or None).

    The loader's layer frame repeats one block of layers per step, so a layer's rows are every
    L-th row: a strided view, no copy. Otherwise one reordering copy, then a slice per layer
    (a groupby plus a sort per layer costs 4x as much on 1.6M rows)."""
    if not len(lay):
        return {}, None
    block = layer_block(lay)
    if block is not None:
        frames = {li: lay.iloc[j::len(block)].reset_index(drop=True)
                  for j, li in sorted(enumerate(block), key=lambda x: x[1])}
        return frames, block
    layer, step = lay["layer"].to_numpy(), lay["step"].to_numpy()
    if layer.dtype.kind not in "iu" or layer.min() < 0 or layer.max() >= 1 << 16:
        return {int(li): sub.sort_values("step", kind="stable").reset_index(drop=True)
                for li, sub in lay.groupby("layer", sort=True, observed=True)}, None
    key = layer.astype(np.uint16)
    order = np.lexsort((step, key))
    by_layer = key[order]
    cuts = np.flatnonzero(by_layer[1:] != by_layer[:-1]) + 1
    ordered = lay.take(order)
    return {int(by_layer[a]): ordered.iloc[a:b].reset_index(drop=True)
            for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(order)])}, None


def _finite(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(values)
    return steps[ok], values[ok]


# ---- registry ------------------------------------------------------------------------------

RULES: list[Callable[[_Ctx], list[Finding]]] = []


def rule(fn: Callable[[_Ctx], list[Finding]]) -> Callable[[_Ctx], list[Finding]]:
    RULES.append(fn)
    return fn


def routing_rule(fn: Callable[[_Ctx], list[Finding]]) -> Callable[[_Ctx], list[Finding]]:
    """A rule about routing: silent on a dense run (its routing stats are null by design)."""
    def wrapped(ctx: _Ctx) -> list[Finding]:
        return fn(ctx) if ctx.routing else []
    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    RULES.append(wrapped)
    return wrapped


def find_all(run: Run) -> list[Finding]:
    """Every finding for `run`, errors first, then warnings, then info."""
    ctx = _Ctx(run)
    out: list[Finding] = []
    for r in RULES:
        out.extend(r(ctx))
    order = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(out, key=lambda f: (order[f.severity], f.code, -1 if f.layer is None else f.layer))


def _where(layer: int | None) -> str:
    return f"layer {layer}" if layer is not None else "model-wide"


# ---- routing statistics ----------------------------------------------------------------------

@routing_rule
def silent_zero(ctx: _Ctx) -> list[Finding]:
    """A routing stat that is exactly 0 on every logged step: a placeholder, not a measurement."""
    out = []
    for stat in schema.LAYER_STATS:
        if stat == "heads_std":  # std 0 is real when every token uses the same count
            continue
        for li, st, v in ctx.series(stat):
            st, v = _finite(st, v)
            if len(v) >= MIN_STEPS and np.all(np.abs(v) <= ZERO_ATOL):
                out.append(Finding(
                    "silent_zero", "error", li,
                    f"{stat} ({_where(li)}) is 0 on all {len(v)} logged steps: a constant returned "
                    f"in place of the statistic",
                    _ev(st[:3], v[:3], stat=stat, n=len(v)),
                    f"compute {stat} from the router's actual per-token values (or log null where it "
                    f"does not apply); never return a fake 0"))
    loads = ctx.run.head_load
    if len(loads) and "load" in loads.columns and ctx.layer_frames:
        lay = loads["layer"].to_numpy()
        v = loads["load"].to_numpy()  # float32 as stored: no 100 MB float64 copy of 12.8M loads
        layers = np.array(sorted(ctx.layer_frames))  # every layer with head loads has a layer row
        n_fin = counts_until(lambda s: np.isfinite(v[s]), lay, layers, MIN_STEPS)
        nonzero = counts_until(lambda s: (np.abs(v[s]) > ZERO_ATOL) & np.isfinite(v[s]), lay, layers)
        for li in layers[(n_fin[layers] >= MIN_STEPS) & (nonzero[layers] == 0)]:
            n = int(np.isfinite(v[lay == li]).sum())  # rare path: the exact count for the evidence
            out.append(Finding(
                "silent_zero", "error", int(li),
                f"head_load (layer {int(li)}) is 0 for every head on every step",
                _ev(values=[0.0], stat="head_load", n=n),
                "log the fraction of tokens that selected each head"))
    return out


def _expected_stats(ctx: _Ctx) -> list[str]:
    present = [s for s in schema.LAYER_STATS if ctx.series(s)]
    if ctx.source != schema.SOURCE_MOH:
        return present  # other trainers log what their format carries; judge only partial gaps
    if ctx.router == "adaptive":
        return list(schema.LAYER_STATS)
    if ctx.router == "moh":
        return sorted(set(present) | {"heads_mean", "heads_min", "heads_max", "heads_std", "entropy"},
                      key=schema.LAYER_STATS.index)
    return present


@routing_rule
def missing_stat(ctx: _Ctx) -> list[Finding]:
    """An expected routing stat absent or null (on every step, or on some)."""
    out = []
    if ctx.source == schema.SOURCE_MOH and not ctx.layer_frames and len(ctx.steps):
        return [Finding("missing_stat", "error", None,
                        f"no per-layer routing statistics in {len(ctx.steps)} step records of a "
                        f"{ctx.router or 'routed'} run",
                        _ev(stat="layers"), "log one `layers` entry per layer on every step record")]
    for stat in _expected_stats(ctx):
        ser = ctx.series(stat)
        if not ser:
            out.append(Finding(
                "missing_stat", "error", None,
                f"{stat} is absent or null on every step of this {ctx.router} run",
                _ev(stat=stat), f"log {stat} for every layer (schema.LAYER_FIELDS)"))
            continue
        for li, st, v in ser:
            bad = ~np.isfinite(v)
            if bad.any():
                out.append(Finding(
                    "missing_stat", "warning", li,
                    f"{stat} ({_where(li)}) is null on {int(bad.sum())} of {len(v)} logged steps",
                    _ev(st[bad], stat=stat, n_missing=int(bad.sum()), n=len(v)),
                    f"log {stat} on every step; a stat that comes and goes hides what the router did"))
        if ctx.layer_frames and stat not in ctx.model_wide:
            absent = [li for li in ctx.layer_frames if li not in {x[0] for x in ser}]
            for li in absent:
                out.append(Finding(
                    "missing_stat", "error", li, f"{stat} (layer {li}) is null on every step",
                    _ev(stat=stat), f"log {stat} for every layer"))
    if ctx.source == schema.SOURCE_MOH and ctx.router == "adaptive":
        s = ctx.steps
        for g in ROUTING_GRAD_GROUPS:
            col = f"grad.{g}"
            if col not in s.columns or not s[col].notna().any():
                out.append(Finding(
                    "missing_stat", "error", None,
                    f"grad_norms.{g} is absent: nothing shows whether the {g} receives a gradient",
                    _ev(stat=col), f"log the gradient norm of the {g} parameters on every step"))
    if not ctx.run.head_load.shape[0] and ctx.source == schema.SOURCE_MOH and ctx.router in ("adaptive", "moh"):
        out.append(Finding("missing_stat", "error", None, "head_load is absent or null on every step",
                           _ev(stat="head_load"), "log the per-head load (H fractions) for every layer"))
    return out


@routing_rule
def constant_stat(ctx: _Ctx) -> list[Finding]:
    """A learned routing stat that never changes: the predictor is not learning (or a placeholder)."""
    out = []
    H, kmin = ctx.n_heads, ctx.k_min()
    for stat in CONSTANT_STATS:
        if stat == "heads_mean" and ctx.router == "moh":
            continue  # shared + top-k: the same count for every token by design
        for li, st, v in ctx.series(stat):
            st, v = _finite(st, v)
            if len(v) < MIN_STEPS or np.all(np.abs(v) <= ZERO_ATOL):
                continue  # too short, or silent_zero's case
            if stat == "heads_mean" and H and (abs(v[0] - H) <= HEAD_COLLAPSE_TOL or abs(v[0] - kmin) <= HEAD_COLLAPSE_TOL):
                continue  # pinned at an end of the range: head_collapse's case
            if np.ptp(v) <= CONSTANT_RTOL * max(abs(float(np.mean(v))), 1e-12):
                out.append(Finding(
                    "constant_stat", "warning", li,
                    f"{stat} ({_where(li)}) is {_g(v[0])} on all {len(v)} logged steps"
                    + (" (at the log's printed precision)" if ctx.source != schema.SOURCE_MOH else ""),
                    _ev(st[[0, -1]], v[[0, -1]], stat=stat, n=len(v)),
                    "check that the predictor's parameters get a gradient and an optimizer group, and "
                    "that the stat is computed from its output rather than returned as a constant"))
    return out


@routing_rule
def degenerate_range(ctx: _Ctx) -> list[Finding]:
    """Per-token min == max: the stat is one value for every token, not a per-token statistic."""
    out = []
    H, kmin = ctx.n_heads, ctx.k_min()
    for base in RANGE_BASES:
        if base == "heads" and ctx.router == "moh":
            continue
        lo, hi = ctx.series(f"{base}_min"), ctx.series(f"{base}_max")
        his = {li: (st, v) for li, st, v in hi}
        for li, st, vmin in lo:
            if li not in his:
                continue
            st2, vmax = his[li]
            ok = np.isfinite(vmin) & np.isfinite(vmax)
            if ok.sum() < MIN_STEPS:
                continue
            s, a, b = st[ok], vmin[ok], vmax[ok]
            deg = np.abs(b - a) <= DEGENERATE_ATOL
            if base == "heads" and H:
                at_end = (np.abs(a - H) <= 0.5) | (np.abs(a - kmin) <= 0.5)
                deg &= ~at_end  # every token at 1 or H heads: head_collapse's case
            frac = float(deg.mean())
            if frac < DEGENERATE_WARN_FRACTION:
                continue
            sev = "error" if frac == 1.0 else "warning"
            out.append(Finding(
                "degenerate_range", sev, li,
                f"{base} min == max ({_where(li)}) on {int(deg.sum())} of {len(deg)} logged steps "
                f"(e.g. {_g(a[deg][-1])}): one value for every token, not a per-token statistic",
                _ev(s[deg], a[deg], stat=base, fraction=frac),
                f"compute {base}_min/{base}_max over the tokens of the batch; if they really are "
                f"equal, the {base} predictor ignores its input (check its weights get a gradient)"))
    return out


def _quantum(v: np.ndarray) -> float:
    """Half the printing step of values (0.005 for 2 decimals); 0 for full-precision floats."""
    v = v[np.isfinite(v)]
    if not len(v):
        return 0.0
    if len(v) > 4096:  # the printing step shows in any few thousand values
        v = v[np.linspace(0, len(v) - 1, 4096).astype(np.int64)]
    tol = 2e-7 * np.maximum(np.abs(v), 1e-3)  # float32 storage error
    for d in range(0, 10):
        if np.all(np.abs(np.round(v, d) - v) <= tol):
            return 0.5 * 10.0 ** -d
    return 0.0


def _affine(x: np.ndarray, y: np.ndarray, qx: float | None = None,
            qy: float | None = None) -> tuple[float, float, float, float] | None:
    """(intercept, slope, max |residual|, tolerance) when y is an exact affine function of x.

    The tolerance is what printing could have lost: half a printed step of y plus |slope| times
    half a step of x (qx/qy: given for means over layers, whose own digits hide the step).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.all():  # (every temporary of 200k+ floats costs page faults: make none that is not needed)
        x, y = x[ok], y[ok]
    if len(x) < REDUNDANT_MIN_STEPS or np.ptp(x) == 0:
        return None
    # least-squares line in closed form (centred sums: as accurate as polyfit, a fraction of its cost)
    # (einsum, not np.dot: a BLAS call starts threads, which costs more than the sum on a busy machine)
    mx, my = float(x.mean()), float(y.mean())
    dx, dy = x - mx, y - my
    b = float(np.einsum("i,i->", dx, dy) / np.einsum("i,i->", dx, dx))
    a = my - b * mx
    dx *= b
    r = np.subtract(dy, dx, out=dy)  # = y - (a + b x), in place
    resid = float(max(r.max(), -r.min()))
    if resid * REDUNDANT_POWER > np.ptp(y):
        return None  # cheap necessary condition: tol <= ptp / POWER and resid <= tol
    if qx is None:
        qx = _quantum(x)
    if qy is None:
        qy = _quantum(y)
    tol = REDUNDANT_SLACK * (qy + abs(b) * qx) + 1e-6 * float(np.max(np.abs(y)))
    if np.ptp(y) < REDUNDANT_POWER * tol or resid > tol:
        return None
    return float(a), float(b), resid, tol


@routing_rule
def redundant_stat(ctx: _Ctx) -> list[Finding]:
    """One routing stat an exact affine function of another (e.g. heads restating complexity)."""
    out = []
    pairs = [(y, x) for i, x in enumerate(REDUNDANT_STATS) for y in REDUNDANT_STATS[:i]]
    step_index = ctx.steps["step"].to_numpy() if "step" in ctx.steps.columns else np.zeros(0)

    cache: dict = {}

    def model_level(stat: str) -> tuple[np.ndarray | None, float]:
        if stat not in cache:
            cache[stat] = _model_level(stat)
        return cache[stat]

    def _model_level(stat: str) -> tuple[np.ndarray | None, float]:
        """(per-step value over the model, its printing half-step): the model-wide column,
        else the mean over layers (a mean of rounded values is off by at most their half-step)."""
        if stat in ctx.model_wide:
            v = ctx.steps[stat].to_numpy(float)
            return v, _quantum(v)
        cols = []
        for li, f in ctx.layer_frames.items():
            if stat in f.columns:
                cols.append(pd.Series(ctx.layer_col(li, stat), index=ctx.layer_col(li, "step")))
        if not cols:
            return None, 0.0
        q = max(_quantum(c.to_numpy()) for c in cols)
        m = pd.concat(cols, axis=1)
        m = m[~m.index.duplicated(keep="last")].mean(axis=1, skipna=False)
        return m.reindex(step_index).to_numpy(float), q

    def finding(y, x, li, fit, n, what):
        a, b, resid, tol = fit
        heads = ("heads_mean" in (x, y))
        return Finding(
            "redundant_stat", "error", li,
            f"{what}{y} = {_g(a)} + {_g(b)} x {x} on all {n} logged steps (max deviation "
            f"{_g(resid)}, within rounding {_g(tol)}): {y} restates {x} and measures nothing"
            + (f"; heads here are the {ctx.heads_what()}" if heads else ""),
            _ev(stat=y, of=x, intercept=a, slope=b, max_deviation=resid, tolerance=tol, n=n),
            "derive each stat from its own quantity: count heads from the hard mask, never from "
            "weights rescaled to the complexity target" if heads else
            f"log {y} from its own computation, not from {x}")

    for y, x in pairs:
        flagged = False
        for li, f in ctx.layer_frames.items():
            if y in f.columns and x in f.columns:
                fit = _affine(ctx.layer_col(li, x), ctx.layer_col(li, y))
                if fit:
                    flagged = True
                    out.append(finding(y, x, li, fit, len(f), ""))
        if flagged or len(ctx.layer_frames) + len(ctx.model_wide) == 0:
            continue
        (xs, qx), (ys, qy) = model_level(x), model_level(y)
        if xs is None or ys is None or (len(ctx.layer_frames) <= 1 and not ({x, y} & set(ctx.model_wide))):
            continue  # one layer and nothing model-wide: the per-layer check said it all
        fit = _affine(xs, ys, qx, qy)
        if fit:
            n = int((np.isfinite(xs) & np.isfinite(ys)).sum())
            what = "mean over layers of " if y not in ctx.model_wide else ""
            out.append(finding(y, x, None, fit, n, what))
    return out


# ---- gradients -------------------------------------------------------------------------------

@routing_rule
def router_grad_zero(ctx: _Ctx) -> list[Finding]:
    """Router / predictor gradient ~0: the loss does not reach them (no straight-through path)."""
    out = []
    s = ctx.live_steps()
    total = s["grad_norm"].to_numpy(float) if "grad_norm" in s.columns else np.full(len(s), np.nan)
    for g in ROUTING_GRAD_GROUPS:
        col = f"grad.{g}"
        if col not in s.columns:
            continue
        v = s[col].to_numpy(float)
        ok = np.isfinite(v)
        if ok.sum() < 1:
            continue
        ref = np.where(np.isfinite(total), total, 0.0)
        zero = ok & (np.abs(v) <= np.maximum(ZERO_ATOL, GRAD_ZERO_RTOL * ref))
        if not zero.any():
            continue
        n, nz = int(ok.sum()), int(zero.sum())
        sev = "error" if nz == n else "warning"
        steps = s["step"].to_numpy()[zero]
        out.append(Finding(
            "router_grad_zero", sev, None,
            f"the {g} gradient norm is ~0 on {nz} of {n} logged steps: "
            + ("the loss never reaches it" if nz == n else "its gradient path is broken on those steps"),
            _ev(steps, v[zero], group=g, n_zero=nz, n=n),
            "make the hard selection differentiable with a straight-through surrogate "
            "(m = hard + soft - stopgrad(soft)); check the parameters are in an optimizer group"))
    return out


def _phases(ctx: _Ctx, frame: pd.DataFrame) -> list[tuple[str | None, pd.DataFrame]]:
    if "phase" not in frame.columns or frame["phase"].isna().all():
        return [(None, frame)]
    out = []
    for ph in pd.unique(frame["phase"].dropna()):
        out.append((str(ph), frame[frame["phase"] == ph]))
    return out


def _in(ph: str | None) -> str:
    return f" in phase {ph}" if ph else ""


@rule
def grad_explosion(ctx: _Ctx) -> list[Finding]:
    """The gradient norm blows up: a spike far above its recent level, or sustained growth."""
    out = []
    if "grad_norm" not in ctx.steps.columns:
        return out
    cap = " (post-clip: the true norm can only be larger)" if ctx.post_clip else ""
    for ph, f in _phases(ctx, ctx.live_steps()):
        g = f["grad_norm"].to_numpy(float)
        st = f["step"].to_numpy()
        ok = np.isfinite(g)
        g, st = g[ok], st[ok]
        if len(g) < MIN_STEPS + 1:
            continue
        prev = pd.Series(g).rolling(GRAD_SPIKE_WINDOW, min_periods=MIN_STEPS).median().shift(1).to_numpy()
        ratio = g / np.where(prev > 0, prev, np.nan)
        spike = (ratio >= GRAD_SPIKE_FACTOR) & (g > GRAD_TARGET)
        w = max(MIN_STEPS, len(g) // 10)
        smooth = pd.Series(g).rolling(w, min_periods=w).median().to_numpy()
        calm = np.nanmin(smooth) if np.isfinite(smooth).any() else np.nan
        tail = float(np.median(g[-w:]))
        growth = (len(g) >= 2 * w and math.isfinite(calm) and calm > 0
                  and tail >= GRAD_GROWTH_FACTOR * calm and tail > GRAD_TARGET)
        if growth:
            out.append(Finding(
                "grad_explosion", "error", None,
                f"the {ctx.grad_what()}{_in(ph)} grew to a median {_g(tail)} over its last {w} logged "
                f"steps, {_g(tail / calm)}x its calmest stretch ({_g(calm)}){cap}",
                _ev(st[-w:], g[-w:], phase=ph, calm_median=calm, tail_median=tail),
                "lower the learning rate (or the router LR multiplier), add or tighten gradient "
                "clipping, keep the router in float32"))
        elif spike.any():
            worst = float(np.nanmax(ratio[spike]))
            sev = "error" if worst >= GRAD_SPIKE_ERROR_FACTOR else "warning"
            out.append(Finding(
                "grad_explosion", sev, None,
                f"the {ctx.grad_what()}{_in(ph)} spiked to {_g(float(g[spike].max()))} on "
                f"{int(spike.sum())} logged steps, up to {_g(worst)}x the median of the previous "
                f"{GRAD_SPIKE_WINDOW}{cap}",
                _ev(st[spike], g[spike], phase=ph, max_ratio=worst),
                "look at the batches of those steps; lower the learning rate or clip gradients"))
    return out


@rule
def clip_saturation(ctx: _Ctx) -> list[Finding]:
    """The gradient norm sits at or above the clip threshold on most steps (or whole epochs)."""
    clip = ctx.clip()
    if clip is None or "grad_norm" not in ctx.steps.columns:
        return []
    s = ctx.live_steps()
    g = s["grad_norm"].to_numpy(float)
    ok = np.isfinite(g)
    if ok.sum() < 1:
        return []
    at = ok & (g >= clip * (1 - CLIP_TOL))
    steps = s["step"].to_numpy()
    # "pinned": judged on the second half of each phase -- norms above the clip in the first
    # steps after initialisation (or a phase start) are normal and the clip is there for them
    worst, worst_ph = 0.0, None
    for ph, f in _phases(ctx, s):
        gg = f["grad_norm"].to_numpy(float)
        gg = gg[np.isfinite(gg)]
        gg = gg[len(gg) // 2:]
        if len(gg) >= MIN_STEPS // 2 + 1:
            fr = float((gg >= clip * (1 - CLIP_TOL)).mean())
            if fr > worst:
                worst, worst_ph = fr, ph
    n_at = int(at.sum())
    if not n_at:
        return []
    if ctx.post_clip and ctx.epoch_mean:
        return [Finding(
            "clip_saturation", "warning", None,
            f"the {ctx.grad_what()} sat at the clip value {_g(clip)} on {n_at} of {int(ok.sum())} "
            f"logged epochs: (nearly) every batch of those epochs was clipped, so the real norm is "
            f"unknown and at least {_g(clip)}",
            _ev(steps[at], g[at], clip=clip, fraction=float(at[ok].mean())),
            "lower the learning rate at that point (e.g. a phase start: warm up again), or log the "
            "norm before clipping to see how far above the clip it was")]
    if worst >= CLIP_SATURATED_FRACTION:
        sev = "warning"
    elif worst >= CLIP_INFO_FRACTION:
        sev = "info"
    else:
        return []
    what = "at or above" if not ctx.post_clip else "at"
    return [Finding(
        "clip_saturation", sev, None,
        f"the {ctx.grad_what()} is {what} the clip threshold {_g(clip)} on {_g(100 * worst)}% of "
        f"the logged steps of the second half{_in(worst_ph)}: the clip, not the learning rate, sets "
        f"the update size",
        _ev(steps[at], g[at], clip=clip, fraction=worst, phase=worst_ph),
        "lower the learning rate or raise the clip threshold; a norm pinned above the clip for "
        "long usually means the LR is too high")]


# ---- loss ------------------------------------------------------------------------------------

def _loss_col(ctx: _Ctx) -> str | None:
    s = ctx.steps
    for c in ("lm_loss", "loss"):
        if c in s.columns and np.isfinite(s[c].to_numpy(float)).any():
            return c
    return None


def _finite_phase_series(ctx: _Ctx, col: str):
    """(phase, steps, values) of `col` per phase, non-finite values dropped, short phases skipped."""
    for ph, f in _phases(ctx, ctx.live_steps()):
        v = f[col].to_numpy(float)
        st = f["step"].to_numpy()
        ok = np.isfinite(v)
        if ok.sum() >= MIN_STEPS:
            yield ph, st[ok], v[ok]


@rule
def loss_not_converging(ctx: _Ctx) -> list[Finding]:
    """A phase whose loss barely falls, or is still falling fast when the phase ends."""
    col = _loss_col(ctx)
    if col is None:
        return []
    out = []
    for ph, st, v in _finite_phase_series(ctx, col):
        n = len(v)
        w = max(1, n // 10)
        head, tail = float(v[:w].mean()), float(v[-w:].mean())
        prev = float(v[-2 * w:-w].mean())
        drop = head - tail
        if head > 0 and drop / head < LOSS_MIN_REL_DROP:
            out.append(Finding(
                "loss_not_converging", "warning", None,
                f"{col}{_in(ph)} went from {_g(head)} to {_g(tail)} over {n} logged steps "
                f"({_g(100 * drop / head)}% lower): the model is not learning",
                _ev(st[[0, -1]], v[[0, -1]], phase=ph, first_mean=head, last_mean=tail, window=w),
                "check the learning rate and schedule, that gradients reach the weights, and the data"))
        elif drop > 0 and (prev - tail) >= LOSS_TAIL_SHARE * drop:
            out.append(Finding(
                "loss_not_converging", "warning", None,
                f"{col}{_in(ph)} was still falling fast when the phase ended ({_g(prev)} -> "
                f"{_g(tail)} over its last tenth, {_g(100 * (prev - tail) / drop)}% of the phase's "
                f"progress): it had not converged",
                _ev(st[-2 * w:], v[-2 * w:], phase=ph, first_mean=head, last_mean=tail,
                    tail_drop_share=(prev - tail) / drop),
                "train this phase for more epochs (or with a higher learning rate)"))
    return out


@rule
def loss_divergence(ctx: _Ctx) -> list[Finding]:
    """The loss climbs back well above the best it reached in the phase."""
    col = _loss_col(ctx)
    if col is None:
        return []
    out = []
    for ph, st, v in _finite_phase_series(ctx, col):
        w = max(3, len(v) // 20)
        sm = pd.Series(v).rolling(w, min_periods=1).median().to_numpy()
        i_min = int(np.argmin(sm))
        best, end = float(sm[i_min]), float(sm[-1])
        if i_min < len(v) - 1 and end >= LOSS_DIVERGE_FACTOR * best and end - best >= LOSS_DIVERGE_MIN_RISE:
            out.append(Finding(
                "loss_divergence", "error", None,
                f"{col}{_in(ph)} rose from its best {_g(best)} (step {int(st[i_min])}) to {_g(end)} "
                f"at the end (rolling median over {w} logged steps)",
                _ev([st[i_min], st[-1]], [best, end], phase=ph, window=w),
                "lower the learning rate, check gradient clipping and for non-finite values; resume "
                "from a checkpoint before the rise"))
    return out


@rule
def nonfinite(ctx: _Ctx) -> list[Finding]:
    """NaN / inf in the loss, gradient norms or stats, skipped steps, or non-finite alerts."""
    s = ctx.steps
    bad_steps: set = set()
    fields: set = set()
    unskipped = False
    skipped = s["skipped"].fillna(0).astype(bool).to_numpy() if "skipped" in s.columns else np.zeros(len(s), bool)
    for c in s.columns:
        if c in ("step", "phase", "skipped") or not pd.api.types.is_numeric_dtype(s[c]):
            continue
        v = s[c].to_numpy(float)
        if c in ("loss", "lm_loss", "grad_norm"):
            # NaN also stands for null here; a column that is never finite is simply not logged
            bad = ~np.isfinite(v) if np.isfinite(v).any() else np.zeros(len(v), bool)
        else:
            bad = np.isinf(v)
        if bad.any():
            fields.add(c)
            bad_steps.update(s["step"].to_numpy()[bad].tolist())
            unskipped |= bool((bad & ~skipped).any())
    if skipped.any():
        bad_steps.update(s["step"].to_numpy()[skipped].tolist())
        fields.add("skipped")
    lay = ctx.run.layers
    for stat in schema.LAYER_STATS:
        if stat in lay.columns:
            v = lay[stat].to_numpy()  # as stored (float32): no float64 copy of 1.6M values
            inf = np.isinf(v if v.dtype.kind == "f" else v.astype(float))
            if inf.any():
                fields.add(f"layers.{stat}")
                bad_steps.update(lay["step"].to_numpy()[inf].tolist())
                unskipped = True
    al = ctx.run.alerts
    n_alerts = 0
    if len(al) and "code" in al.columns:
        hit = al["code"].astype(str).str.contains(NONFINITE_ALERT) | \
            al.get("message", pd.Series("", index=al.index)).astype(str).str.contains(NONFINITE_ALERT)
        n_alerts = int(hit.sum())
        if n_alerts:
            bad_steps.update(int(x) for x in al.loc[hit, "step"].dropna().tolist())
    if not bad_steps and not n_alerts:
        return []
    end = ctx.run.end or {}
    failed = end.get("status") == schema.STATUS_FAILED
    last_bad = False
    col = _loss_col(ctx)
    if col is not None and len(s):
        last_bad = not math.isfinite(float(s[col].iloc[-1]))
    sev = "error" if (failed or last_bad or unskipped) else "warning"
    steps = sorted(bad_steps)
    how = ("the run stopped (status failed)" if failed else
           "the last step is non-finite" if last_bad else
           "not marked skipped: the weights may be corrupted" if unskipped else
           "the steps were skipped and the run went on")
    return [Finding(
        "nonfinite", sev, None,
        f"non-finite values on {len(steps)} logged steps ({', '.join(sorted(fields)) or 'alerts'}"
        f"{f'; {n_alerts} alerts' if n_alerts else ''}): {how}",
        _ev(steps, fields=sorted(fields), n_alerts=n_alerts),
        "find the first bad step: lower the learning rate, clip gradients, keep the router and "
        "softmax in float32, check the data for empty or huge examples")]


# ---- heads -------------------------------------------------------------------------------------

def _final(frame: pd.DataFrame) -> pd.DataFrame:
    n = len(frame)
    return frame.iloc[n - max(1, int(math.ceil(n * HEAD_WINDOW_FRACTION))):]


@routing_rule
def head_collapse(ctx: _Ctx) -> list[Finding]:
    """Every token at the minimum or the maximum head count: the routing no longer adapts."""
    if ctx.router == "moh" or not ctx.n_heads:
        return []
    H, kmin = float(ctx.n_heads), ctx.k_min()
    lo_end = 1.0 if ctx.heads_soft else kmin
    out = []
    for li, f in ctx.layer_frames.items():
        w = _final(f)
        hm = w["heads_mean"].to_numpy(float) if "heads_mean" in w else np.full(len(w), np.nan)
        if not np.isfinite(hm).any():
            continue
        hmin = w["heads_min"].to_numpy(float) if "heads_min" in w else np.full(len(w), np.nan)
        hmax = w["heads_max"].to_numpy(float) if "heads_max" in w else np.full(len(w), np.nan)
        at_min = np.where(np.isfinite(hmax), hmax <= lo_end + 0.5, hm <= lo_end + HEAD_COLLAPSE_TOL) \
            if not ctx.heads_soft else hm <= lo_end + HEAD_COLLAPSE_TOL
        at_max = np.where(np.isfinite(hmin), hmin >= H - 0.5, hm >= H - HEAD_COLLAPSE_TOL) \
            if not ctx.heads_soft else hm >= H - HEAD_COLLAPSE_TOL
        ok = np.isfinite(hm)
        for which, mask, end in (("minimum", at_min, lo_end), ("maximum", at_max, H)):
            frac = float(mask[ok].mean())
            if frac >= HEAD_COLLAPSE_FRACTION:
                out.append(Finding(
                    "head_collapse", "warning", li,
                    f"layer {li}: every token at the {which} of {_g(end)} heads on {_g(100 * frac)}% "
                    f"of the final {len(w)} logged steps (heads = {ctx.heads_what()}; mean "
                    f"{_g(float(np.nanmean(hm)))})",
                    _ev(w["step"].to_numpy()[-3:], hm[-3:], which=which, fraction=frac, bound=end),
                    "the budget/threshold predictors saturated: check the head-budget weight and "
                    "target, the threshold range, and that the predictors get a gradient"
                    if which == "minimum" else
                    "routing became dense: check the threshold and budget predictors and the "
                    "budget loss (target_heads, budget weight)"))
    return out


def _final_loads(ctx: _Ctx) -> dict[int, np.ndarray]:
    """Mean load per head over the final window, per layer (computed once per run)."""
    if ctx.final_loads is not None:
        return ctx.final_loads
    ctx.final_loads = out = {}
    hl = ctx.run.head_load
    H = ctx.n_heads
    if not len(hl) or "load" not in hl.columns or not H:
        return out
    step = hl["step"].to_numpy()
    if np.all(step[1:] >= step[:-1]):  # the loader's order: the window is a tail, found without sorting
        new_step = step[1:] != step[:-1]
        n_steps = int(np.count_nonzero(new_step)) + 1
        need = max(1, int(math.ceil(n_steps * HEAD_WINDOW_FRACTION)))
        # The last `need` distinct steps: from a tail slice sized by the mean rows per step, with
        # margin; a log too uneven for it falls back to all distinct steps.
        tail = step[-min(len(step), int(len(step) * need / n_steps * 1.25) + 1):]
        tail = tail[np.r_[True, tail[1:] != tail[:-1]]]  # distinct steps of a sorted slice, no hashing
        if len(tail) < need:
            tail = step[np.r_[True, new_step]]
        cut = tail[len(tail) - need]
        w = slice(int(np.searchsorted(step, cut)), None)
    else:
        steps = np.unique(step)
        cut = steps[len(steps) - max(1, int(math.ceil(len(steps) * HEAD_WINDOW_FRACTION)))]
        w = step >= cut
    lay = hl["layer"].to_numpy()[w].astype(np.int64)
    head = hl["head"].to_numpy()[w].astype(np.int64)
    v = hl["load"].to_numpy()[w].astype(float)
    keep = np.isfinite(v) & (head >= 0) & (head < H) & (lay >= 0)
    lay, head, v = lay[keep], head[keep], v[keep]
    if not len(v):
        return out
    key = lay * H + head
    n_l = int(lay.max()) + 1
    sums = np.bincount(key, weights=v, minlength=n_l * H).reshape(n_l, H)
    counts = np.bincount(key, minlength=n_l * H).reshape(n_l, H)
    for li in range(n_l):
        if (counts[li] > 0).all() and sums[li].sum() > 0:
            out[li] = sums[li] / counts[li]
    return out


def _routed(ctx: _Ctx, v: np.ndarray) -> np.ndarray:
    """Heads that compete for load: under `moh`, shared heads (always on, load 1) are left out."""
    if ctx.router == "moh":
        return v[v < 0.999]
    return v


@routing_rule
def dead_heads(ctx: _Ctx) -> list[Finding]:
    """Heads that (almost) no token selects: share of the load < 1/(10 H) over the final window."""
    out = []
    H = ctx.n_heads
    for li, v in _final_loads(ctx).items():
        share = v / v.sum()
        dead = np.nonzero(share < DEAD_HEAD_SHARE / H)[0]
        if len(dead):
            out.append(Finding(
                "dead_heads", "warning", li,
                f"layer {li}: head(s) {', '.join(map(str, dead))} get {_g(100 * share[dead].max())}% "
                f"or less of the load over the final {_g(100 * HEAD_WINDOW_FRACTION)}% of the run "
                f"(dead below {_g(100 * DEAD_HEAD_SHARE / H)}%)",
                _ev(values=v, heads=dead, share=share),
                "raise the load-balance weight, or re-initialise / re-route those heads; check the "
                "router's initialisation is not already one-sided"))
    return out


@routing_rule
def load_imbalance(ctx: _Ctx) -> list[Finding]:
    """Head loads far from even: coefficient of variation above LOAD_CV_MAX over the final window."""
    out = []
    for li, v in _final_loads(ctx).items():
        r = _routed(ctx, v)
        if len(r) < 2 or r.mean() <= 0:
            continue
        cv = float(r.std() / r.mean())
        if cv > LOAD_CV_MAX:
            viol = float((r.max() - r.mean()) / r.mean())
            out.append(Finding(
                "load_imbalance", "warning", li,
                f"layer {li}: head loads uneven (coefficient of variation {_g(cv)} > {LOAD_CV_MAX}; "
                f"busiest head {_g(viol + 1)}x the mean) over the final {_g(100 * HEAD_WINDOW_FRACTION)}% "
                f"of the run",
                _ev(values=v, cv=cv, max_violation=viol),
                "raise the load-balance loss weight (usual 0.01) or check it is computed from the "
                "selected heads' fractions and mean router probabilities"))
    return out


# ---- predictors and auxiliary losses ------------------------------------------------------------

@routing_rule
def predictor_growth(ctx: _Ctx) -> list[Finding]:
    """Predictor weight norm growing without bound: >= 3x its start and still rising at the end."""
    out = []
    for li, st, v in ctx.series("pred_norm"):
        st, v = _finite(st, v)
        n = len(v)
        if n < MIN_STEPS:
            continue
        i0 = 0 if v[0] > PRED_NORM_TINY else n // 10
        base = float(v[i0])
        if base <= PRED_NORM_TINY:
            continue
        last, q3 = float(v[-1]), float(v[(3 * n) // 4])
        ratio = last / base
        rising = last >= q3 * (1 + PRED_STILL_RISING)
        if ratio >= PRED_GROWTH_RATIO and rising:
            out.append(Finding(
                "predictor_growth", "warning", li,
                f"predictor weight norm ({_where(li)}) grew {_g(ratio)}x, {_g(base)} -> {_g(last)}, "
                f"and was still rising over the last quarter of the run ({_g(q3)} -> {_g(last)})",
                _ev(st[[i0, (3 * n) // 4, -1]], [base, q3, last], ratio=ratio),
                "bound the predictors: weight decay or a norm cap on them, a lower router LR "
                "multiplier, or a loss that does not reward ever-sharper sigmoids"))
    return out


@routing_rule
def aux_dominates(ctx: _Ctx) -> list[Finding]:
    """The auxiliary losses are too large a share of the total loss at the end of the run."""
    s = ctx.live_steps()
    if "loss" not in s.columns or not len(s):
        return []
    loss = s["loss"].to_numpy(float)
    wcols = [c for c in s.columns if c.startswith("aux_weighted.") and s[c].notna().any()]
    if wcols:
        aux = s[wcols].to_numpy(float)
        aux = np.where(np.isfinite(aux), aux, 0.0).sum(axis=1)
        how = "sum of aux_weighted"
    elif "lm_loss" in s.columns and np.isfinite(s["lm_loss"].to_numpy(float)).any():
        aux = loss - s["lm_loss"].to_numpy(float)
        how = "loss - lm_loss"
    else:
        return []
    share = aux / loss
    ok = np.isfinite(share) & (loss > 0)
    if ok.sum() < MIN_STEPS:
        return []
    share, st = share[ok], s["step"].to_numpy()[ok]
    w = max(1, len(share) // 10)
    final = float(share[-w:].mean())
    if final <= AUX_SHARE_MAX:
        return []
    terms = {c.split(".", 1)[1]: float(s[c].to_numpy(float)[ok][-w:].mean()) for c in wcols}
    return [Finding(
        "aux_dominates", "warning", None,
        f"auxiliary losses are {_g(100 * final)}% of the total loss over the last {w} logged steps "
        f"({how}; limit {_g(100 * AUX_SHARE_MAX)}%)",
        _ev(st[-w:][-3:], share[-w:][-3:], share=final, terms=terms),
        "lower the aux weights (usual: load balance 0.01, z 1e-3) so the LM loss drives training"
        )]


@routing_rule
def vacuous_aux(ctx: _Ctx) -> list[Finding]:
    """An auxiliary loss (or aux weight) that is exactly 0 on every step: it does nothing."""
    out = []
    s = ctx.steps
    for c in s.columns:
        if not c.startswith("aux."):
            continue
        v = s[c].to_numpy(float)
        v = v[np.isfinite(v)]
        if len(v) < MIN_STEPS or not np.all(np.abs(v) <= ZERO_ATOL):
            continue
        term = c.split(".", 1)[1]
        weight = ctx.config.get(AUX_WEIGHT_KEYS.get(term, f"{term}_weight"))
        off = isinstance(weight, (int, float)) and weight == 0
        out.append(Finding(
            "vacuous_aux", "info" if off else "warning", None,
            f"aux term {term} is 0 on all {len(v)} logged steps"
            + (" (its weight is 0: switched off)" if off else ": it contributes nothing to training"),
            _ev(values=v[:3], term=term, weight=weight),
            "if the term should act, check its inputs (e.g. a complexity loss against weights "
            "rescaled to the complexity target is 0 by construction); otherwise drop it"))
    return out


__all__ = ["Finding", "RULES", "SEVERITIES", "find_all", "rule", "routing_rule"]
