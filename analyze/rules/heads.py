"""Rules on how tokens use the heads over the final window: collapse to one end of the range,
dead heads, uneven load."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .base import HEAD_COLLAPSE_TOL, MIN_STEPS, Finding, evidence, short
from .context import Context
from .registry import routing_rule

HEAD_WINDOW_FRACTION = 0.2   # collapse / load rules judge the final fifth of the run
HEAD_COLLAPSE_FRACTION = 0.9
DEAD_HEAD_SHARE = 0.1        # dead: share of the load < 1/(10 H) (ROUTING.md)
_WINDOW = f"over the final {short(100 * HEAD_WINDOW_FRACTION)}% of the run"  # what the load rules judge
LOAD_CV_MAX = 0.5            # coefficient of variation of head loads; Switch-style balance
                             # keeps it well below, one head taking half the load exceeds it


def final_window_size(n: int) -> int:
    """How many of n logged steps the final window holds: the last fifth, at least one."""
    return max(1, int(math.ceil(n * HEAD_WINDOW_FRACTION)))


def final_window(n: int) -> slice:
    """The final window of n per-step values: what the head, allocation and alignment rules and
    the report's routing metrics judge, so they all speak of the same steps."""
    return slice(n - final_window_size(n), None)


def final_values(ctx: Context, stat: str):
    """Per layer, the final window of a per-layer stat: (layer, window slice, steps, values) with
    `steps`/`values` its finite entries; layers with fewer than MIN_STEPS of them are left out."""
    for li, steps, v in ctx.series(stat):
        w = final_window(len(v))
        ok = np.isfinite(v[w])
        if ok.sum() >= MIN_STEPS:
            yield li, w, steps[w][ok], v[w][ok]


def _final(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.iloc[final_window(len(frame))]


@routing_rule
def head_collapse(ctx: Context) -> list[Finding]:
    """Every token at the minimum or the maximum head count: the routing no longer adapts."""
    if ctx.fixed_count or not ctx.n_heads:
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
            ctx.margin("head_collapse", "share of final steps with every token at one end", frac,
                       HEAD_COLLAPSE_FRACTION, ">=", layer=li)
            if frac >= HEAD_COLLAPSE_FRACTION:
                out.append(Finding(
                    "head_collapse", "warning", li,
                    f"layer {li}: every token at the {which} of {short(end)} heads on {short(100 * frac)}% "
                    f"of the final {len(w)} logged steps (heads = {ctx.heads_what()}; mean "
                    f"{short(float(np.nanmean(hm)))})",
                    evidence(w["step"].to_numpy()[-3:], hm[-3:], which=which, fraction=frac, bound=end),
                    "the budget/threshold predictors saturated: check the head-budget weight and "
                    "target, the threshold range, and that the predictors get a gradient"
                    if which == "minimum" else
                    "routing became dense: check the threshold and budget predictors and the "
                    "budget loss (target_heads, budget weight)"))
    return out


def _final_loads(ctx: Context) -> dict[int, np.ndarray]:
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
        need = final_window_size(n_steps)
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
        cut = steps[final_window(len(steps))][0]
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


def _window_ends(ctx: Context, li: int) -> tuple[list[int], list[float]]:
    """The final window's first and last step, and the layer's mean head count there: the steps
    a load finding rests on (its per-head loads are in evidence["loads"])."""
    f = ctx.layer_frames.get(li)
    if f is None or not len(f):
        return [], []
    w = _final(f)
    st = w["step"].to_numpy()
    hm = w["heads_mean"].to_numpy(float) if "heads_mean" in w else np.full(len(w), np.nan)
    return [int(st[0]), int(st[-1])], [float(hm[0]), float(hm[-1])]


def _routed(ctx: Context, v: np.ndarray) -> np.ndarray:
    """Heads that compete for load: under `moh`, shared heads (always on, load 1) are left out."""
    if ctx.router == "moh":
        return v[v < 0.999]
    return v


@routing_rule
def dead_heads(ctx: Context) -> list[Finding]:
    """Heads that (almost) no token selects: share of the load < 1/(10 H) over the final window."""
    out = []
    H = ctx.n_heads
    for li, v in _final_loads(ctx).items():
        share = v / v.sum()
        ctx.margin("dead_heads", "least-used head's load share x H", float(share.min() * H), DEAD_HEAD_SHARE,
                   "<", layer=li)
        dead = np.nonzero(share < DEAD_HEAD_SHARE / H)[0]
        if not len(dead):
            continue
        heads, most = ", ".join(map(str, dead)), short(100 * share[dead].max())
        message = (f"layer {li}: head(s) {heads} get {most}% or less of the load {_WINDOW} "
                   f"(dead below {short(100 * DEAD_HEAD_SHARE / H)}%)")
        out.append(Finding("dead_heads", "warning", li, message,
                           evidence(*_window_ends(ctx, li), heads=dead, loads=v, share=share),
                           "raise the load-balance weight, or re-initialise / re-route those heads; "
                           "check the router's initialisation is not already one-sided"))
    return out


@routing_rule
def load_imbalance(ctx: Context) -> list[Finding]:
    """Head loads far from even: coefficient of variation above LOAD_CV_MAX over the final window."""
    out = []
    for li, v in _final_loads(ctx).items():
        r = _routed(ctx, v)
        if len(r) < 2 or r.mean() <= 0:
            continue
        cv = float(r.std() / r.mean())
        ctx.margin("load_imbalance", "coefficient of variation of head loads", cv, LOAD_CV_MAX, ">", layer=li)
        if cv > LOAD_CV_MAX:
            viol = float((r.max() - r.mean()) / r.mean())
            out.append(Finding(
                "load_imbalance", "warning", li,
                f"layer {li}: head loads uneven (coefficient of variation {short(cv)} > {LOAD_CV_MAX}; "
                f"busiest head {short(viol + 1)}x the mean) {_WINDOW}",
                evidence(*_window_ends(ctx, li), loads=v, cv=cv, max_violation=viol),
                "raise the load-balance loss weight (usual 0.01) or check it is computed from the "
                "selected heads' fractions and mean router probabilities"))
    return out
