"""Rules on the routing predictors and the auxiliary losses that train them: unbounded predictor
growth, aux losses that dominate or do nothing."""

from __future__ import annotations

import math

import numpy as np

from moh import schema

from .base import Finding, MIN_STEPS, ZERO_ATOL, evidence, finite, short, where
from .context import Context
from .registry import routing_rule

PRED_NORM_TINY = 1e-3        # a zero-initialised predictor: measure growth from 10% of the run
PRED_GROWTH_RATIO = 3.0      # final / initial predictor norm
# ... and not levelled off: over the last quarter of the run it still grows at >= 20% of its
# average rate over the whole run. A norm that rises from its small init and flattens (healthy
# engine runs: -0.2..0.05 of the rate, bench/calibrate.py) is learning; the reference trainer's
# e70e746 log keeps growing at ~0.3 of its rate to the end (1.9 -> 13.6, no plateau).
PRED_RATE_SHARE = 0.2
PRED_SMOOTH_SHARE = 0.05     # levels are means over 5% of the run (noise of one logged step)
AUX_SHARE_MAX = 0.3          # weighted aux >= 30% of the total loss competes with the LM loss


def _phase_segments(ctx: Context, st: np.ndarray) -> list[tuple[str | None, int, int]]:
    """(phase, start, stop) of the contiguous stretches of a series' steps in one phase."""
    steps = ctx.steps
    if "phase" not in steps.columns or not len(st) or not len(steps):
        return [(None, 0, len(st))]
    s_step = steps["step"].to_numpy()
    names = steps["phase"].astype(str).to_numpy()
    idx = np.clip(np.searchsorted(s_step, st), 0, len(s_step) - 1)
    ph = names[idx]
    cuts = np.flatnonzero(ph[1:] != ph[:-1]) + 1
    return [(str(ph[a]), int(a), int(b)) for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(st)])]


@routing_rule
def predictor_growth(ctx: Context) -> list[Finding]:
    """Predictor weight norm growing without bound: >= 3x its start and, over the last quarter of
    a phase, still growing at a sizeable fraction of its average rate over the run."""
    out = []
    for li, st, v in ctx.series("pred_norm"):
        st, v = finite(st, v)
        n = len(v)
        if n < MIN_STEPS:
            continue
        i0 = 0 if v[0] > PRED_NORM_TINY else n // 10
        w = max(1, int(n * PRED_SMOOTH_SHARE))
        base, last = float(v[i0:i0 + w].mean()), float(v[n - w:].mean())
        if base <= PRED_NORM_TINY or n - w - i0 <= 0:
            continue
        ratio = last / base
        overall = (last - base) / (n - w - i0)
        # each phase's last quarter: a phase restarts the learning-rate schedule, so a norm that
        # levels off within each phase can still step up between them (the engine's instruction
        # phase); growth without bound keeps climbing at the end of a phase
        share, where_ = -math.inf, None
        for ph, a, b in _phase_segments(ctx, st):
            m = b - max(a, i0)
            wp = max(1, int(m * PRED_SMOOTH_SHARE))
            q = b - m + (3 * m) // 4
            if m < MIN_STEPS or b - wp - q <= 0:
                continue
            mid, end = float(v[q:q + wp].mean()), float(v[b - wp:b].mean())
            sh = ((end - mid) / (b - wp - q)) / overall if overall > 0 else 0.0
            if sh > share:
                share, where_ = sh, (ph, q, b - 1, mid, end)
        if where_ is None:
            continue
        ph, q, e, mid, end = where_
        ctx.margin("predictor_growth", "final / initial predictor norm", ratio, PRED_GROWTH_RATIO, ">=", layer=li,
                   joint=True)
        ctx.margin("predictor_growth", "a phase's last-quarter growth rate / run's rate", share, PRED_RATE_SHARE,
                   ">=", layer=li, joint=True)
        if ratio >= PRED_GROWTH_RATIO and share >= PRED_RATE_SHARE:
            out.append(Finding(
                "predictor_growth", "warning", li,
                f"predictor weight norm ({where(li)}) grew {short(ratio)}x, {short(base)} -> {short(last)}, "
                f"and has not levelled off: over the last quarter of {('phase ' + ph) if ph else 'the run'} it "
                f"still grew at {short(100 * share)}% of its average rate over the run "
                f"({short(mid)} -> {short(end)})",
                evidence(st[[i0, q, e]], [base, mid, end], ratio=ratio, recent_rate_share=share, phase=ph),
                "bound the predictors: weight decay or a norm cap on them, a lower router LR "
                "multiplier, or a loss that does not reward ever-sharper sigmoids"))
    return out


@routing_rule
def aux_dominates(ctx: Context) -> list[Finding]:
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
    ctx.margin("aux_dominates", "aux share of the total loss, last tenth", final, AUX_SHARE_MAX, ">")
    if final <= AUX_SHARE_MAX:
        return []
    terms = {c.split(".", 1)[1]: float(s[c].to_numpy(float)[ok][-w:].mean()) for c in wcols}
    return [Finding(
        "aux_dominates", "warning", None,
        f"auxiliary losses are {short(100 * final)}% of the total loss over the last {w} logged steps "
        f"({how}; limit {short(100 * AUX_SHARE_MAX)}%)",
        evidence(st[-w:][-3:], share[-w:][-3:], share=final, terms=terms),
        "lower the aux weights (usual: load balance 0.01, z 1e-3) so the LM loss drives training"
        )]


@routing_rule
def vacuous_aux(ctx: Context) -> list[Finding]:
    """An auxiliary loss (or aux weight) that is exactly 0 on every step: it does nothing."""
    out = []
    s = ctx.steps
    for c in s.columns:
        if not c.startswith("aux."):
            continue
        v = s[c].to_numpy(float)
        st = s["step"].to_numpy()[np.isfinite(v)]  # the steps the evidence rests on
        v = v[np.isfinite(v)]
        if len(v) >= MIN_STEPS:
            ctx.margin("vacuous_aux", "max |aux term| over the run (term closest to all-zero)",
                       float(np.abs(v).max()), ZERO_ATOL, "<=")
        if len(v) < MIN_STEPS or not np.all(np.abs(v) <= ZERO_ATOL):
            continue
        term = c.split(".", 1)[1]
        weight = ctx.config.get(schema.AUX_WEIGHT_KEYS.get(term, f"{term}_weight"))
        off = isinstance(weight, (int, float)) and weight == 0
        out.append(Finding(
            "vacuous_aux", "info" if off else "warning", None,
            f"aux term {term} is 0 on all {len(v)} logged steps"
            + (" (its weight is 0: switched off)" if off else ": it contributes nothing to training"),
            evidence(st, v, term=term, weight=weight),
            "if the term should act, check its inputs (e.g. a complexity loss against weights "
            "rescaled to the complexity target is 0 by construction); otherwise drop it"))
    return out
