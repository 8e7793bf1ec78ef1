"""Rules on gradient norms: a routing gradient that never arrives, blow-ups, a clip that sets the
update size."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from moh import schema

from ..criteria import default_target
from .base import MIN_STEPS, ROUTING_GRAD_GROUPS, ZERO_ATOL, Finding, evidence, in_phase, short
from .context import Context
from .loss import loss_column
from .registry import rule, routing_rule
from .trend import kendall_tau, theil_sen_slope

GRAD_ZERO_RTOL = 1e-8        # routing grad / total grad below float32 noise: no gradient arrives
GRAD_SPIKE_FACTOR = 10.0     # a step 10x the recent median is a blow-up, not noise
GRAD_SPIKE_ERROR_FACTOR = 100.0
GRAD_SPIKE_WINDOW = 20       # "recent": the previous 20 logged steps
GRAD_TARGET = default_target("grad_norm")[1]  # the success table's bound; spikes below it are harmless
GRAD_GROWTH_FACTOR = 10.0    # a phase ending 10x above its calmest stretch keeps growing
CLIP_TOL = 0.01              # "at the clip value": within 1% (epoch means of clipped norms)
CLIP_SATURATED_FRACTION = 0.5    # clipped on most steps of a phase's second half (early steps
                                 # after init are expected above the clip): the clip sets the step
CLIP_INFO_FRACTION = 0.25
# ... and a warning only when the clip really rescales the typical step: the median pre-clip norm
# of that second half is >= 2x the clip (every other step at least halved). Healthy engine runs on
# the reference corpus sit above a clip of 1 on ~70% of late pre-training steps with a median of
# 1.4x (bench/calibrate.py): the clip trims them, the learning rate still sets the step (info).
CLIP_WARN_MEDIAN_RATIO = 2.0
# grad_norm_rising, over the second half of a phase: a monotone trend (Kendall tau >= 0.6: 80%
# of point pairs rising; healthy runs measure <= -0.24, bench/calibrate.py), a real rise (the
# Theil-Sen line gains >= 15% of its starting level), a loss that has stopped improving (< 10%
# lower, as loss_not_converging's "has not learned"), and a norm above the success bar.
GRAD_RISE_TAU = 0.6
GRAD_RISE_MIN = 0.15
GRAD_RISE_LOSS_DROP = 0.10


@routing_rule
def router_grad_zero(ctx: Context) -> list[Finding]:
    """Router / predictor gradient ~0: the loss does not reach them (no straight-through path)."""
    out = []
    s = ctx.live_steps()
    total = s["grad_norm"].to_numpy(float) if "grad_norm" in s.columns else np.full(len(s), np.nan)
    for g in ROUTING_GRAD_GROUPS:
        col = schema.grad_column(g)
        if col not in s.columns:
            continue
        v = s[col].to_numpy(float)
        ok = np.isfinite(v)
        if ok.sum() < 1:
            continue
        ref = np.where(np.isfinite(total), total, 0.0)
        zero = ok & (np.abs(v) <= np.maximum(ZERO_ATOL, GRAD_ZERO_RTOL * ref))
        rel = np.abs(v[ok]) / np.maximum(ref[ok], ZERO_ATOL)
        ctx.margin("router_grad_zero", "smallest routing grad / total grad on a step",
                   float(rel.min()), GRAD_ZERO_RTOL, "<=")
        if not zero.any():
            continue
        n, nz = int(ok.sum()), int(zero.sum())
        sev = "error" if nz == n else "warning"
        steps = s["step"].to_numpy()[zero]
        out.append(Finding(
            "router_grad_zero", sev, None,
            f"the {g} gradient norm is ~0 on {nz} of {n} logged steps: "
            + ("the loss never reaches it" if nz == n else "its gradient path is broken on those steps"),
            evidence(steps, v[zero], group=g, n_zero=nz, n=n),
            "make the hard selection differentiable with a straight-through surrogate "
            "(m = hard + soft - stopgrad(soft)); check the parameters are in an optimizer group"))
    return out


@rule
def grad_explosion(ctx: Context) -> list[Finding]:
    """The gradient norm blows up: a spike far above its recent level, or sustained growth."""
    out = []
    if "grad_norm" not in ctx.steps.columns:
        return out
    cap = " (post-clip: the true norm can only be larger)" if ctx.post_clip else ""
    for ph, f in ctx.live_phases():
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
        if len(g) >= 2 * w and math.isfinite(calm) and calm > 0:
            ctx.margin("grad_explosion", "tail / calmest median grad norm", tail / calm,
                       GRAD_GROWTH_FACTOR, ">=", phase=ph)
        above = (g > GRAD_TARGET) & np.isfinite(ratio)
        ctx.margin("grad_explosion",
                   f"largest step / previous-{GRAD_SPIKE_WINDOW} median (norm > {GRAD_TARGET:g})",
                   float(ratio[above].max()) if above.any() else 0.0, GRAD_SPIKE_FACTOR, ">=", phase=ph)
        if growth:
            out.append(Finding(
                "grad_explosion", "error", None,
                f"the {ctx.grad_what()}{in_phase(ph)} grew to a median {short(tail)} over its last {w} logged "
                f"steps, {short(tail / calm)}x its calmest stretch ({short(calm)}){cap}",
                evidence(st[-w:], g[-w:], phase=ph, calm_median=calm, tail_median=tail),
                "lower the learning rate (or the router LR multiplier), add or tighten gradient "
                "clipping, keep the router in float32"))
        elif spike.any():
            worst = float(np.nanmax(ratio[spike]))
            sev = "error" if worst >= GRAD_SPIKE_ERROR_FACTOR else "warning"
            out.append(Finding(
                "grad_explosion", sev, None,
                f"the {ctx.grad_what()}{in_phase(ph)} spiked to {short(float(g[spike].max()))} on "
                f"{int(spike.sum())} logged steps, up to {short(worst)}x the median of the previous "
                f"{GRAD_SPIKE_WINDOW}{cap}",
                evidence(st[spike], g[spike], phase=ph, max_ratio=worst),
                "look at the batches of those steps; lower the learning rate or clip gradients"))
    return out


@rule
def grad_norm_rising(ctx: Context) -> list[Finding]:
    """The gradient norm trends upward over the second half of a phase while the loss is not
    improving there, at a level above the success bar: training is getting less stable, not
    converging (the seed's "Gradient Instability": 36 -> 60 while the loss stalled at 3.3)."""
    out = []
    col = loss_column(ctx)
    if "grad_norm" not in ctx.steps.columns or col is None:
        return out
    for ph, f in ctx.live_phases():
        g, loss = f["grad_norm"].to_numpy(float), f[col].to_numpy(float)
        st = f["step"].to_numpy()
        ok = np.isfinite(g) & np.isfinite(loss)
        g, loss, st = g[ok], loss[ok], st[ok]
        half = len(g) // 2
        g, loss, st = g[half:], loss[half:], st[half:]
        m = len(g)
        if m < MIN_STEPS:
            continue
        k = max(1, m // 3)
        start, end = float(np.median(g[:k])), float(np.median(g[-k:]))
        if start <= 0:
            continue
        tau = kendall_tau(g)
        rise = theil_sen_slope(g) * (m - 1) / start
        l0, l1 = float(np.median(loss[:k])), float(np.median(loss[-k:]))
        loss_drop = (l0 - l1) / l0 if l0 > 0 else 0.0
        for stat, value, thr, fires in (("Kendall tau of grad norm, 2nd half", tau, GRAD_RISE_TAU, ">="),
                                        ("Theil-Sen rise / start level, 2nd half", rise, GRAD_RISE_MIN, ">="),
                                        ("relative loss drop, 2nd half", loss_drop, GRAD_RISE_LOSS_DROP, "<"),
                                        ("grad norm at the end (median, last third)", end, GRAD_TARGET, ">")):
            ctx.margin("grad_norm_rising", stat, value, thr, fires, phase=ph, joint=True)
        if (tau >= GRAD_RISE_TAU and rise >= GRAD_RISE_MIN and loss_drop < GRAD_RISE_LOSS_DROP
                and end > GRAD_TARGET):
            out.append(Finding(
                "grad_norm_rising", "warning", None,
                f"the {ctx.grad_what()}{in_phase(ph)} rose from {short(start)} to {short(end)} over the "
                f"second half of the phase (Kendall tau {short(tau)}, +{short(100 * rise)}% by a robust "
                f"trend) while {col} improved only {short(100 * loss_drop)}% ({short(l0)} -> {short(l1)})",
                evidence(st[[0, k - 1, m - k, m - 1]], g[[0, k - 1, m - k, m - 1]], phase=ph, kendall_tau=tau,
                         rise=rise, loss_start=l0, loss_end=l1, loss_drop=loss_drop),
                "lower the learning rate (or the router LR multiplier), clip gradients, and check the "
                "routing gates pass a usable gradient (a hard mask without straight-through does not)"))
    return out


@rule
def clip_saturation(ctx: Context) -> list[Finding]:
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
    worst, worst_ph, worst_ratio = 0.0, None, 0.0
    for ph, f in ctx.live_phases():
        gg = f["grad_norm"].to_numpy(float)
        gg = gg[np.isfinite(gg)]
        gg = gg[len(gg) // 2:]
        if len(gg) >= MIN_STEPS // 2 + 1:
            fr = float((gg >= clip * (1 - CLIP_TOL)).mean())
            if fr > worst:
                worst, worst_ph, worst_ratio = fr, ph, float(np.median(gg)) / clip
    n_at = int(at.sum())
    if not (ctx.post_clip and ctx.epoch_mean):
        ctx.margin("clip_saturation", "share of 2nd-half steps at/above the clip", worst,
                   CLIP_SATURATED_FRACTION, ">=", phase=worst_ph, joint=True)
        ctx.margin("clip_saturation", "median 2nd-half norm / clip", worst_ratio,
                   CLIP_WARN_MEDIAN_RATIO, ">=", phase=worst_ph, joint=True)
    if not n_at:
        return []
    if ctx.post_clip and ctx.epoch_mean:
        return [Finding(
            "clip_saturation", "warning", None,
            f"the {ctx.grad_what()} sat at the clip value {short(clip)} on {n_at} of {int(ok.sum())} "
            f"logged epochs: (nearly) every batch of those epochs was clipped, so the real norm is "
            f"unknown and at least {short(clip)}",
            evidence(steps[at], g[at], clip=clip, fraction=float(at[ok].mean())),
            "lower the learning rate at that point (e.g. a phase start: warm up again), or log the "
            "norm before clipping to see how far above the clip it was")]
    if worst >= CLIP_SATURATED_FRACTION and worst_ratio >= CLIP_WARN_MEDIAN_RATIO:
        sev = "warning"
    elif worst >= CLIP_INFO_FRACTION:
        sev = "info"
    else:
        return []
    what = "at or above" if not ctx.post_clip else "at"
    return [Finding(
        "clip_saturation", sev, None,
        f"the {ctx.grad_what()} is {what} the clip threshold {short(clip)} on {short(100 * worst)}% of "
        f"the logged steps of the second half{in_phase(worst_ph)} (median {short(worst_ratio)}x the clip)"
        + (": the clip, not the learning rate, sets the update size" if sev == "warning" else
           ": the clip trims those steps"),
        evidence(steps[at], g[at], clip=clip, fraction=worst, phase=worst_ph, median_over_clip=worst_ratio),
        "lower the learning rate or raise the clip threshold; a norm pinned above the clip for "
        "long usually means the LR is too high")]
