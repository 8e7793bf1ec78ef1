"""Rules on the routing predictors and the auxiliary losses that train them: unbounded predictor
growth, aux losses that dominate or do nothing."""

from __future__ import annotations

import numpy as np

from moh import schema

from .base import Finding, MIN_STEPS, ZERO_ATOL, evidence, finite, short, where
from .context import Context
from .registry import routing_rule

PRED_NORM_TINY = 1e-3        # a zero-initialised predictor: measure growth from 10% of the run
PRED_GROWTH_RATIO = 3.0      # final / initial predictor norm
PRED_STILL_RISING = 0.01     # ... and still rising by >= 1% over the last quarter
AUX_SHARE_MAX = 0.3          # weighted aux >= 30% of the total loss competes with the LM loss


@routing_rule
def predictor_growth(ctx: Context) -> list[Finding]:
    """Predictor weight norm growing without bound: >= 3x its start and still rising at the end."""
    out = []
    for li, st, v in ctx.series("pred_norm"):
        st, v = finite(st, v)
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
                f"predictor weight norm ({where(li)}) grew {short(ratio)}x, {short(base)} -> {short(last)}, "
                f"and was still rising over the last quarter of the run ({short(q3)} -> {short(last)})",
                evidence(st[[i0, (3 * n) // 4, -1]], [base, q3, last], ratio=ratio),
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
