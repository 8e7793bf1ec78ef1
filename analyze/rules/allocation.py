"""Rules on whether adaptive routing still adapts: a top-p threshold with no room to move, every
token given the same head count, a mean head count away from the run's own budget.

They apply to the `adaptive` router only: `moh` gives every token shared + k heads by design and
has no threshold; a dense run routes nothing. Each judges the final window of the run (the same
final fifth as the head rules), per layer, against the run's own configuration (run_start.config:
tau_min, tau_max, target_heads) where it needs one.
"""

from __future__ import annotations

import math

import numpy as np

from .base import Finding, HEAD_COLLAPSE_TOL, MIN_STEPS, evidence, short
from .context import Context
from .heads import final_values, final_window
from .registry import routing_rule

# A threshold range narrower than this cannot adapt: the default [0.3, 0.8] is 0.5 wide, so
# 0.05 is a tenth of it (a squeezed range like [0.79, 0.8] is 0.01).
THRESHOLD_MIN_ROOM = 0.05
# Per-token threshold spread (max - min over a step's tokens) below this: one threshold for every
# token. Healthy runs spread 0.36-0.50 over the final window (bench/calibrate.py).
THRESHOLD_MIN_SPREAD = 0.02
# "At a bound": the mean threshold within 0.01 of tau_min or tau_max, on most of the window.
THRESHOLD_BOUND_TOL = 0.01
THRESHOLD_PINNED_FRACTION = 0.9
# heads_std (std of the hard head count over a step's tokens) below this on average: at most
# ~1% of tokens differ from the rest by one head. Healthy adaptive runs: 1.08-1.59.
UNIFORM_HEADS_STD = 0.1
# Mean heads per token further than this from target_heads: the default criterion's band
# ([3, 4] around 3.5) is +-0.5 heads. Healthy runs land within 0.02.
BUDGET_TOL = 0.5


def _config_float(ctx: Context, key: str) -> float | None:
    v = ctx.config.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _adaptive(ctx: Context) -> bool:
    return ctx.router == "adaptive"


@routing_rule
def threshold_pinned(ctx: Context) -> list[Finding]:
    """The top-p threshold cannot move: its configured range is tiny, every token gets the same
    threshold, or the mean sits at tau_min / tau_max. Adaptive top-p degenerated to a fixed one."""
    if not _adaptive(ctx):
        return []
    out = []
    lo, hi = _config_float(ctx, "tau_min"), _config_float(ctx, "tau_max")
    room = None if lo is None or hi is None else hi - lo
    if room is not None:
        ctx.margin("threshold_pinned", "tau_max - tau_min", room, THRESHOLD_MIN_ROOM, "<")
        if room < THRESHOLD_MIN_ROOM:
            out.append(Finding(
                "threshold_pinned", "warning", None,
                f"the configured threshold range [{short(lo)}, {short(hi)}] is {short(room)} wide "
                f"(< {short(THRESHOLD_MIN_ROOM)}): the top-p threshold has no room to adapt, so "
                f"routing is top-p with a fixed p",
                evidence(tau_min=lo, tau_max=hi, room=room),
                "widen tau_min / tau_max (default 0.3-0.8) so the threshold predictor can move"))
    spread_lo, spread_hi = ctx.series("threshold_min"), ctx.series("threshold_max")
    highs = {li: v for li, _, v in spread_hi}
    means = {li: (st, v) for li, st, v in ctx.series("threshold_mean")}
    for li, st, vmin in spread_lo:
        if li not in highs or li not in means:
            continue
        w = final_window(len(vmin))
        spread = highs[li][w] - vmin[w]
        spread = spread[np.isfinite(spread)]
        if len(spread) < MIN_STEPS:
            continue
        med = float(np.median(spread))
        ctx.margin("threshold_pinned", "median per-token threshold spread", med, THRESHOLD_MIN_SPREAD,
                   "<", layer=li)
        steps, mean = means[li][0][w], means[li][1][w]
        reason = None
        if room is not None and room < THRESHOLD_MIN_ROOM:
            continue  # the configured range already says it, for every layer
        if med < THRESHOLD_MIN_SPREAD:
            reason = (f"every token gets (nearly) the same threshold: median per-token spread "
                      f"{short(med)} < {short(THRESHOLD_MIN_SPREAD)} over the final {len(spread)} logged steps")
        elif lo is not None and hi is not None:
            ok = np.isfinite(mean)
            dist = np.minimum(np.abs(mean[ok] - lo), np.abs(hi - mean[ok]))
            if len(dist) >= MIN_STEPS:
                at = float((dist <= THRESHOLD_BOUND_TOL).mean())
                ctx.margin("threshold_pinned", "share of final steps with mean at a bound", at,
                           THRESHOLD_PINNED_FRACTION, ">=", layer=li)
                if at >= THRESHOLD_PINNED_FRACTION:
                    bound = lo if np.median(np.abs(mean[ok] - lo)) < np.median(np.abs(hi - mean[ok])) else hi
                    reason = (f"the mean threshold sits at the bound {short(bound)} on {short(100 * at)}% "
                              f"of the final {len(dist)} logged steps")
        if reason:
            out.append(Finding(
                "threshold_pinned", "warning", li, f"layer {li}: {reason}: the top-p threshold no longer adapts",
                evidence(steps[-3:], mean[-3:], median_spread=med, tau_min=lo, tau_max=hi),
                "check the threshold predictor gets a gradient (straight-through on the threshold) "
                "and that its range and surrogate temperature (st_temp_threshold) leave it room"))
    return out


@routing_rule
def uniform_allocation(ctx: Context) -> list[Finding]:
    """An adaptive router that gives every token the same head count over the late run:
    adaptive routing degenerated to fixed-k."""
    if not _adaptive(ctx) or ctx.heads_soft:
        return []
    H, kmin = ctx.n_heads, ctx.k_min()
    means = {li: v for li, _, v in ctx.series("heads_mean")}
    out = []
    for li, w, s, v in final_values(ctx, "heads_std"):
        m = float(np.mean(v))
        hm = means.get(li)
        mean_heads = float(np.nanmean(hm[w])) if hm is not None and np.isfinite(hm[w]).any() else math.nan
        if H and math.isfinite(mean_heads) and (abs(mean_heads - H) <= HEAD_COLLAPSE_TOL
                                                or abs(mean_heads - kmin) <= HEAD_COLLAPSE_TOL):
            continue  # every token at 1 or H heads: head_collapse's case
        ctx.margin("uniform_allocation", "mean heads_std, final window", m, UNIFORM_HEADS_STD, "<=", layer=li)
        if m <= UNIFORM_HEADS_STD:
            out.append(Finding(
                "uniform_allocation", "warning", li,
                f"layer {li}: every token gets the same head count (heads_std {short(m)} <= "
                f"{short(UNIFORM_HEADS_STD)} on average over the final {len(v)} logged steps, "
                f"mean {short(mean_heads)} heads): adaptive routing has degenerated to fixed-k",
                evidence(s[-3:], v[-3:], mean_heads_std=m, mean_heads=mean_heads),
                "check the complexity predictor varies over tokens and reaches the head budget "
                "(straight-through on the budget, st_temp_budget), and the threshold can move"))
    return out


@routing_rule
def budget_miss(ctx: Context) -> list[Finding]:
    """Mean heads per token far from the run's own configured target_heads, per layer."""
    if not _adaptive(ctx) or ctx.heads_soft:
        return []
    target = _config_float(ctx, "target_heads")
    if target is None:
        return []
    weight = _config_float(ctx, "budget_weight")
    out = []
    for li, _, s, x in final_values(ctx, "heads_mean"):
        m = float(np.mean(x))
        miss = abs(m - target)
        ctx.margin("budget_miss", "|mean heads - target_heads|, final window", miss, BUDGET_TOL, ">", layer=li)
        if miss > BUDGET_TOL:
            off = " (its budget loss is off: budget_weight 0)" if weight == 0 else ""
            out.append(Finding(
                "budget_miss", "warning", li,
                f"layer {li}: {short(m)} heads per token on average over the final {len(x)} "
                f"logged steps, {short(miss)} from the configured target_heads {short(target)}{off}",
                evidence(s[-3:], x[-3:], mean_heads=m, target_heads=target, budget_weight=weight),
                "turn on / raise the budget loss (budget_weight), or set target_heads to the compute "
                "you want; check the budget surrogate reaches the complexity predictor"))
    return out
