"""Rules on the loss: a phase that does not learn or stops early, a loss that climbs back, and
non-finite values anywhere in the record."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from moh import schema

from .base import MIN_STEPS, Finding, evidence, in_phase, short
from .context import Context, phases
from .registry import rule

LOSS_MIN_REL_DROP = 0.10     # a phase that lowers its loss by < 10% has not learned
LOSS_TAIL_SHARE = 0.10       # the last tenth of a phase still giving >= 10% of its progress
LOSS_DIVERGE_FACTOR = 1.5    # ending 50% above the best smoothed loss of the phase
LOSS_DIVERGE_MIN_RISE = 0.1  # ... and at least 0.1 nats above it (tiny losses are noisy)
NONFINITE_ALERT = re.compile(r"non.?finite|\bnan\b|\binf", re.IGNORECASE)


def _loss_col(ctx: Context) -> str | None:
    s = ctx.steps
    for c in ("lm_loss", "loss"):
        if c in s.columns and np.isfinite(s[c].to_numpy(float)).any():
            return c
    return None


def _loss_at(s: pd.DataFrame, col: str | None, steps: list) -> tuple[list, list[str]]:
    """The loss logged at each of `steps` (None where no step record: an alert's step) and what
    it was: "nan", "+inf", "-inf", "finite" or "absent" (the report writes non-finite numbers as
    null, so the kind says which)."""
    if col is None:
        return [None] * len(steps), ["absent"] * len(steps)
    by_step = dict(zip(s["step"].to_numpy().tolist(), s[col].to_numpy(float).tolist()))
    values = [by_step.get(st) for st in steps]
    kinds = ["absent" if v is None else "nan" if v != v else ("+inf" if v > 0 else "-inf") if math.isinf(v)
             else "finite" for v in values]
    return values, kinds


def _finite_phase_series(ctx: Context, col: str):
    """(phase, steps, values) of `col` per phase, non-finite values dropped, short phases skipped."""
    for ph, f in phases(ctx, ctx.live_steps()):
        v = f[col].to_numpy(float)
        st = f["step"].to_numpy()
        ok = np.isfinite(v)
        if ok.sum() >= MIN_STEPS:
            yield ph, st[ok], v[ok]


@rule
def loss_not_converging(ctx: Context) -> list[Finding]:
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
                f"{col}{in_phase(ph)} went from {short(head)} to {short(tail)} over {n} logged steps "
                f"({short(100 * drop / head)}% lower): the model is not learning",
                evidence(st[[0, -1]], v[[0, -1]], phase=ph, first_mean=head, last_mean=tail, window=w),
                "check the learning rate and schedule, that gradients reach the weights, and the data"))
        elif drop > 0 and (prev - tail) >= LOSS_TAIL_SHARE * drop:
            out.append(Finding(
                "loss_not_converging", "warning", None,
                f"{col}{in_phase(ph)} was still falling fast when the phase ended ({short(prev)} -> "
                f"{short(tail)} over its last tenth, {short(100 * (prev - tail) / drop)}% of the phase's "
                f"progress): it had not converged",
                evidence(st[-2 * w:], v[-2 * w:], phase=ph, first_mean=head, last_mean=tail,
                    tail_drop_share=(prev - tail) / drop),
                "train this phase for more epochs (or with a higher learning rate)"))
    return out


@rule
def loss_divergence(ctx: Context) -> list[Finding]:
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
                f"{col}{in_phase(ph)} rose from its best {short(best)} (step {int(st[i_min])}) to {short(end)} "
                f"at the end (rolling median over {w} logged steps)",
                evidence([st[i_min], st[-1]], [best, end], phase=ph, window=w),
                "lower the learning rate, check gradient clipping and for non-finite values; resume "
                "from a checkpoint before the rise"))
    return out


@rule
def nonfinite(ctx: Context) -> list[Finding]:
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
    values, kinds = _loss_at(s, col, evidence(steps)["steps"])  # the steps the evidence lists
    return [Finding(
        "nonfinite", sev, None,
        f"non-finite values on {len(steps)} logged steps ({', '.join(sorted(fields)) or 'alerts'}"
        f"{f'; {n_alerts} alerts' if n_alerts else ''}): {how}",
        evidence(steps, values, fields=sorted(fields), n_alerts=n_alerts, loss_kinds=kinds[:len(values)]),
        "find the first bad step: lower the learning rate, clip gradients, keep the router and "
        "softmax in float32, check the data for empty or huge examples")]
