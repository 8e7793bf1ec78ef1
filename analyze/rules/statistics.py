"""Rules on the per-layer routing statistics: placeholders (0, constant, min == max), gaps, and
one stat restating another."""

from __future__ import annotations

import numpy as np
import pandas as pd

from moh import schema

from ..groupscan import counts_until
from .base import (HEAD_COLLAPSE_TOL, MIN_STEPS, ROUTING_GRAD_GROUPS, ZERO_ATOL, Finding, evidence, finite,
                   short, where)
from .context import Context
from .registry import routing_rule

CONSTANT_RTOL = 1e-7         # never changes: range below float32 resolution of its value
DEGENERATE_ATOL = 1e-6       # per-token min == max: below any real spread of a [0, 1] stat
DEGENERATE_WARN_FRACTION = 0.5   # on half the steps: most of the run says nothing per token
REDUNDANT_MIN_STEPS = 8      # an exact affine fit through fewer points proves little
REDUNDANT_SLACK = 1.5        # least squares on rounded data can exceed the rounding bound a bit
REDUNDANT_POWER = 10.0       # y must vary >= 10x the tolerance, or any line fits the noise
REDUNDANT_STATS = ("heads_mean", "threshold_mean", "complexity_mean", "entropy")
CONSTANT_STATS = ("heads_mean", "threshold_mean", "complexity_mean", "entropy", "pred_norm")
RANGE_BASES = ("heads", "threshold", "complexity")


@routing_rule
def silent_zero(ctx: Context) -> list[Finding]:
    """A routing stat that is exactly 0 on every logged step: a placeholder, not a measurement."""
    out = []
    for stat in schema.LAYER_STATS:
        if stat == "heads_std":  # std 0 is real when every token uses the same count
            continue
        for li, st, v in ctx.series(stat):
            st, v = finite(st, v)
            if len(v) >= MIN_STEPS:
                ctx.margin("silent_zero", "max |stat| over the run (stat closest to all-zero)",
                           float(np.abs(v).max()), ZERO_ATOL, "<=", layer=li)
            if len(v) >= MIN_STEPS and np.all(np.abs(v) <= ZERO_ATOL):
                out.append(Finding(
                    "silent_zero", "error", li,
                    f"{stat} ({where(li)}) is 0 on all {len(v)} logged steps: a constant returned "
                    f"in place of the statistic",
                    evidence(st[:3], v[:3], stat=stat, n=len(v)),
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
            mine = (lay == li) & np.isfinite(v)  # rare path: the exact count for the evidence
            n = int(mine.sum())
            st = np.unique(loads["step"].to_numpy()[mine])
            out.append(Finding(
                "silent_zero", "error", int(li),
                f"head_load (layer {int(li)}) is 0 for every head on every step",
                evidence(st, np.zeros(len(st)), stat="head_load", n=n),
                "log the fraction of tokens that selected each head"))
    return out


def _expected_stats(ctx: Context) -> list[str]:
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
def missing_stat(ctx: Context) -> list[Finding]:
    """An expected routing stat absent or null (on every step, or on some)."""
    out = []
    if ctx.source == schema.SOURCE_MOH and not ctx.layer_frames and len(ctx.steps):
        return [Finding("missing_stat", "error", None,
                        f"no per-layer routing statistics in {len(ctx.steps)} step records of a "
                        f"{ctx.router or 'routed'} run",
                        evidence(stat="layers"), "log one `layers` entry per layer on every step record")]
    every = ctx.steps["step"].to_numpy() if "step" in ctx.steps.columns else np.zeros(0, int)
    nulls = [None] * len(every)  # the values it rests on: null on those steps
    for stat in _expected_stats(ctx):
        ser = ctx.series(stat)
        if not ser:
            out.append(Finding(
                "missing_stat", "error", None,
                f"{stat} is absent or null on every step of this {ctx.router} run",
                evidence(every, nulls, stat=stat), f"log {stat} for every layer (schema.LAYER_FIELDS)"))
            continue
        for li, st, v in ser:
            bad = ~np.isfinite(v)
            if bad.any():
                out.append(Finding(
                    "missing_stat", "warning", li,
                    f"{stat} ({where(li)}) is null on {int(bad.sum())} of {len(v)} logged steps",
                    evidence(st[bad], [None] * int(bad.sum()), stat=stat, n_missing=int(bad.sum()), n=len(v)),
                    f"log {stat} on every step; a stat that comes and goes hides what the router did"))
        if ctx.layer_frames and stat not in ctx.model_wide:
            absent = [li for li in ctx.layer_frames if li not in {x[0] for x in ser}]
            for li in absent:
                out.append(Finding(
                    "missing_stat", "error", li, f"{stat} (layer {li}) is null on every step",
                    evidence(every, nulls, stat=stat), f"log {stat} for every layer"))
    if ctx.source == schema.SOURCE_MOH and ctx.router == "adaptive":
        s = ctx.steps
        for g in ROUTING_GRAD_GROUPS:
            col = schema.grad_column(g)
            if col not in s.columns or not s[col].notna().any():
                out.append(Finding(
                    "missing_stat", "error", None,
                    f"{col} is absent: nothing shows whether the {g} receives a gradient",
                    evidence(every, nulls, stat=col), f"log the gradient norm of the {g} parameters on every step"))
    if not ctx.run.head_load.shape[0] and ctx.source == schema.SOURCE_MOH and ctx.router in ("adaptive", "moh"):
        out.append(Finding("missing_stat", "error", None, "head_load is absent or null on every step",
                           evidence(every, nulls, stat="head_load"), "log the per-head load (H fractions) for every layer"))
    return out


@routing_rule
def constant_stat(ctx: Context) -> list[Finding]:
    """A learned routing stat that never changes: the predictor is not learning (or a placeholder)."""
    out = []
    H, kmin = ctx.n_heads, ctx.k_min()
    for stat in CONSTANT_STATS:
        if stat == "heads_mean" and ctx.router == "moh":
            continue  # shared + top-k: the same count for every token by design
        for li, st, v in ctx.series(stat):
            st, v = finite(st, v)
            if len(v) < MIN_STEPS or np.all(np.abs(v) <= ZERO_ATOL):
                continue  # too short, or silent_zero's case
            if stat == "heads_mean" and H and (abs(v[0] - H) <= HEAD_COLLAPSE_TOL or abs(v[0] - kmin) <= HEAD_COLLAPSE_TOL):
                continue  # pinned at an end of the range: head_collapse's case
            rel_range = float(np.ptp(v)) / max(abs(float(np.mean(v))), 1e-12)
            ctx.margin("constant_stat", "range / |mean| (least-moving learned stat)", rel_range,
                       CONSTANT_RTOL, "<=", layer=li)
            if rel_range <= CONSTANT_RTOL:
                out.append(Finding(
                    "constant_stat", "warning", li,
                    f"{stat} ({where(li)}) is {short(v[0])} on all {len(v)} logged steps"
                    + (" (at the log's printed precision)" if ctx.source != schema.SOURCE_MOH else ""),
                    evidence(st[[0, -1]], v[[0, -1]], stat=stat, n=len(v)),
                    "check that the predictor's parameters get a gradient and an optimizer group, and "
                    "that the stat is computed from its output rather than returned as a constant"))
    return out


@routing_rule
def degenerate_range(ctx: Context) -> list[Finding]:
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
            ctx.margin("degenerate_range", "share of steps with per-token min == max", frac,
                       DEGENERATE_WARN_FRACTION, ">=", layer=li)
            if frac < DEGENERATE_WARN_FRACTION:
                continue
            sev = "error" if frac == 1.0 else "warning"
            out.append(Finding(
                "degenerate_range", sev, li,
                f"{base} min == max ({where(li)}) on {int(deg.sum())} of {len(deg)} logged steps "
                f"(e.g. {short(a[deg][-1])}): one value for every token, not a per-token statistic",
                evidence(s[deg], a[deg], stat=base, fraction=frac),
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
def redundant_stat(ctx: Context) -> list[Finding]:
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

    def finding(y, x, li, fit, n, what, steps, values):
        a, b, resid, tol = fit
        heads = ("heads_mean" in (x, y))
        return Finding(
            "redundant_stat", "error", li,
            f"{what}{y} = {short(a)} + {short(b)} x {x} on all {n} logged steps (max deviation "
            f"{short(resid)}, within rounding {short(tol)}): {y} restates {x} and measures nothing"
            + (f"; heads here are the {ctx.heads_what()}" if heads else ""),
            evidence(steps, values, stat=y, of=x, intercept=a, slope=b, max_deviation=resid, tolerance=tol, n=n),
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
                    out.append(finding(y, x, li, fit, len(f), "", ctx.layer_col(li, "step"),
                                       ctx.layer_col(li, y)))
        if flagged or len(ctx.layer_frames) + len(ctx.model_wide) == 0:
            continue
        (xs, qx), (ys, qy) = model_level(x), model_level(y)
        if xs is None or ys is None or (len(ctx.layer_frames) <= 1 and not ({x, y} & set(ctx.model_wide))):
            continue  # one layer and nothing model-wide: the per-layer check said it all
        fit = _affine(xs, ys, qx, qy)
        if fit:
            n = int((np.isfinite(xs) & np.isfinite(ys)).sum())
            what = "mean over layers of " if y not in ctx.model_wide else ""
            out.append(finding(y, x, None, fit, n, what, step_index, ys))
    return out
