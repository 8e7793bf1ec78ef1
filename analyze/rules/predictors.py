"""Rules on the routing predictors and the auxiliary losses that train them: unbounded predictor
growth, aux losses that dominate or do nothing."""

from __future__ import annotations

import math

import numpy as np

from moh import schema

from .base import Finding, MIN_STEPS, ZERO_ATOL, evidence, finite, short, where
from .context import Context
from .registry import routing_rule

# The norm is in units of the predictor's input, the block's normed activations (unit RMS per
# component), so it is comparable across model widths: a weight vector of norm |w| spreads a
# step's logits over about 4-5.5 |w| on healthy engine runs. Those end at 0.92-1.16
# (complexity_target entropy_rank) and 0.60-1.33 (the old "heads" objective): growth there is the
# rise from a small init to a working predictor, and it may still creep by up to +2.9% over a
# phase's last quarter. A norm without bound ends far above that level AND is still rising:
PRED_NORM_LEVEL = 2.5        # final level >= about twice the largest healthy one
PRED_LATE_GROWTH = 0.02      # and some phase's last quarter still adds >= 2% of the level
# (the reference trainer's e70e746 log: 13.6, +5.1% over pre-training's last quarter; the broken
# engine run runaway_predictor in bench/calibrate.py: 6.8-7.0, +14%; predictors made large by a
# huge router LR but levelled off end at 4-11 and grow <= +1.7%: docs/findings.md)
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
    """Predictor weight norm growing without bound: it ends >= PRED_NORM_LEVEL and, over the last
    quarter of some phase, still grows by >= PRED_LATE_GROWTH of its level."""
    out = []
    for li, st, v in ctx.series("pred_norm"):
        st, v = finite(st, v)
        n = len(v)
        if n < MIN_STEPS:
            continue
        w = max(1, int(n * PRED_SMOOTH_SHARE))
        first, level = float(v[:w].mean()), float(v[n - w:].mean())
        # each phase's last quarter: a phase restarts the learning-rate schedule, so a norm that
        # levels off within each phase can still step up between them (the engine's instruction
        # phase); growth without bound keeps climbing at the end of a phase. Relative to the
        # norm's own level, so neither the init nor the early rise enters it.
        growth, where_ = -math.inf, None
        for ph, a, b in _phase_segments(ctx, st):
            m = b - a
            wp = max(1, int(m * PRED_SMOOTH_SHARE))
            q = a + (3 * m) // 4
            if m < MIN_STEPS or b - wp - q <= 0:
                continue
            mid, end = float(v[q:q + wp].mean()), float(v[b - wp:b].mean())
            if mid <= 0:
                continue
            g = end / mid - 1.0
            if g > growth:
                growth, where_ = g, (ph, q, b - 1, mid, end)
        if where_ is None:
            continue
        ph, q, e, mid, end = where_
        ctx.margin("predictor_growth", "final predictor norm", level, PRED_NORM_LEVEL, ">=", layer=li, joint=True)
        ctx.margin("predictor_growth", "a phase's last-quarter growth / its level", growth, PRED_LATE_GROWTH,
                   ">=", layer=li, joint=True)
        if level >= PRED_NORM_LEVEL and growth >= PRED_LATE_GROWTH:
            ratio = level / first if first > 0 else None  # a zero-initialised predictor has none
            start = f"{short(ratio)}x its start {short(first)}" if ratio is not None else "from 0"
            out.append(Finding(
                "predictor_growth", "warning", li,
                f"predictor weight norm ({where(li)}) ends at {short(level)} ({start}; healthy runs "
                f"end near 1) and has not levelled off: over the last quarter "
                f"of {('phase ' + ph) if ph else 'the run'} it still grew {short(100 * growth)}% "
                f"({short(mid)} -> {short(end)})",
                evidence(st[[q, e]], [mid, end], level=level, late_growth=growth, ratio=ratio, phase=ph),
                "bound the predictors: weight decay or a norm cap on them, a lower router LR "
                "multiplier, or a loss that does not reward ever-sharper sigmoids (a target at the "
                "sigmoid's ends, e.g. target_heads = n_heads)"))
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
