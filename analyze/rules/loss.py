"""Rules on the loss: a phase that does not learn or stops early, a loss that climbs back, and
non-finite values anywhere in the record."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from moh import schema

from .base import MIN_STEPS, Finding, evidence, in_phase, short
from .context import Context
from .registry import rule

LOSS_MIN_REL_DROP = 0.10     # a phase that lowers its loss by < 10% has not learned
LOSS_TAIL_SHARE = 0.10       # the last tenth of a phase still giving >= 10% of its progress
LOSS_DIVERGE_FACTOR = 1.5    # ending 50% above the best smoothed loss of the phase
LOSS_DIVERGE_MIN_RISE = 0.1  # ... and at least 0.1 nats above it (tiny losses are noisy)
# The late window: the last 40% of a phase's logged steps, the medians of its two halves. Far
# above the bar = >= 2x the success table's bound of 0.40 (healthy runs end at ~0.22-0.26).
# There, a loss that moves < 5% of its level is flat (loss_plateau: stalled; the seed's
# before-fix state stalled at 3.25, 8x the bound), one that still falls >= 5% has not converged
# (loss_not_converging: stopped too early; 3 + 2 epochs of the default model end at ~4.4).
LOSS_TARGET = 0.40
LOSS_PLATEAU_SHARE = 0.4
LOSS_PLATEAU_MIN_POINTS = 4
LOSS_FLAT_REL = 0.05
LOSS_FAR_ABOVE = 2.0
NONFINITE_ALERT = re.compile(r"non.?finite|\bnan\b|\binf", re.IGNORECASE)


def loss_column(ctx: Context) -> str | None:
    """The LM loss column when logged (aux terms excluded), else the total loss."""
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
    for ph, f in ctx.live_phases():
        v = f[col].to_numpy(float)
        st = f["step"].to_numpy()
        ok = np.isfinite(v)
        if ok.sum() >= MIN_STEPS:
            yield ph, st[ok], v[ok]


def _late_window(st: np.ndarray, v: np.ndarray):
    """The last LOSS_PLATEAU_SHARE of a phase (>= LOSS_PLATEAU_MIN_POINTS values): its steps, values,
    and the medians of its first and second halves; None when the phase is shorter."""
    w = max(LOSS_PLATEAU_MIN_POINTS, int(math.ceil(len(v) * LOSS_PLATEAU_SHARE)))
    if len(v) < w:
        return None
    win, wst = v[-w:], st[-w:]
    return wst, win, float(np.median(win[: w // 2])), float(np.median(win[w // 2:]))


@rule
def loss_not_converging(ctx: Context) -> list[Finding]:
    """A phase whose loss barely falls, is still falling fast when the phase ends, or ends far
    above the success bar while still falling (stopped too early: too few epochs)."""
    col = loss_column(ctx)
    if col is None:
        return []
    out = []
    for ph, st, v in _finite_phase_series(ctx, col):
        n = len(v)
        w = max(1, n // 10)
        head, tail = float(v[:w].mean()), float(v[-w:].mean())
        prev = float(v[-2 * w:-w].mean())
        drop = head - tail
        if head > 0:
            ctx.margin("loss_not_converging", "relative drop over the phase", drop / head,
                       LOSS_MIN_REL_DROP, "<", phase=ph)
        if drop > 0:
            ctx.margin("loss_not_converging", "last tenth's share of the phase's drop", (prev - tail) / drop,
                       LOSS_TAIL_SHARE, ">=", phase=ph)
        late = _late_far_and_falling(ctx, ph, st, v)
        if head > 0 and drop / head < LOSS_MIN_REL_DROP:
            out.append(Finding(
                "loss_not_converging", "warning", None,
                f"{col}{in_phase(ph)} went from {short(head)} to {short(tail)} over {n} logged steps "
                f"({short(100 * drop / head)}% lower): the model is not learning",
                evidence(st[[0, -1]], v[[0, -1]], phase=ph, first_mean=head, last_mean=tail, window=w),
                "check the learning rate and schedule, that gradients reach the weights, and the data"))
        elif late is not None:
            wst, win, a, b = late
            out.append(Finding(
                "loss_not_converging", "warning", None,
                f"{col}{in_phase(ph)} ended at {short(b)}, {short(b / LOSS_TARGET)}x the target "
                f"{short(LOSS_TARGET)}, and was still falling over the last {len(win)} logged steps "
                f"({short(a)} -> {short(b)}, {short(100 * (a - b) / a)}% lower): the phase stopped before "
                f"it converged",
                evidence(wst[[0, -1]], win[[0, -1]], phase=ph, first_half_median=a, second_half_median=b,
                         relative_fall=(a - b) / a, target=LOSS_TARGET),
                "train this phase for more epochs (or with a higher learning rate)"))
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


def _late_far_and_falling(ctx: Context, ph, st, v):
    """The late window when the loss there is >= LOSS_FAR_ABOVE x the bar and still >= LOSS_FLAT_REL
    lower in its second half than its first (margins recorded either way), else None."""
    late = _late_window(st, v)
    if late is None or late[2] <= 0 or ctx.run.generic:  # a recorded model has no 0.40 bar
        return None
    _, _, a, b = late
    ctx.margin("loss_not_converging", "relative fall over the last 40%", (a - b) / a, LOSS_FLAT_REL, ">=",
               phase=ph, joint=True)
    ctx.margin("loss_not_converging", "loss level / 0.40 bar", b / LOSS_TARGET, LOSS_FAR_ABOVE, ">=",
               phase=ph, joint=True)
    return late if (a - b) / a >= LOSS_FLAT_REL and b >= LOSS_FAR_ABOVE * LOSS_TARGET else None


@rule
def loss_divergence(ctx: Context) -> list[Finding]:
    """The loss climbs back well above the best it reached in the phase: at the end (error), or
    at some point after which it recovered (a transient divergence, warning), or above the loss of
    a uniform guess over the vocabulary (ln V, where a fresh model starts: an unstable learning
    rate throws the weights off on the first updates, before a lower loss is ever logged). The
    uniform bound applies to the run's first phase only: a later phase starts from a trained model,
    which can be confidently wrong on new data (healthy instruction tuning starts at ~1.7x ln V)."""
    col = loss_column(ctx)
    if col is None:
        return []
    out = []
    vocab = (ctx.run.meta.get("data") or {}).get("vocab_size")
    uniform = math.log(vocab) if isinstance(vocab, int) and not isinstance(vocab, bool) and vocab > 1 else None
    for k, (ph, st, v) in enumerate(_finite_phase_series(ctx, col)):
        if k:
            uniform = None  # from a trained model, not a fresh one
        w = max(3, len(v) // 20)
        sm = pd.Series(v).rolling(w, min_periods=1).median().to_numpy()
        i_min = int(np.argmin(sm))
        best, end = float(sm[i_min]), float(sm[-1])
        so_far = np.minimum.accumulate(sm)
        i_peak = int(np.argmax(sm / np.where(so_far > 0, so_far, np.inf)))
        peak, low = float(sm[i_peak]), float(so_far[i_peak])
        i_low = int(np.argmin(sm[: i_peak + 1]))
        i_top = int(np.argmax(sm))
        top = float(sm[i_top])
        if best > 0:
            ctx.margin("loss_divergence", "end / best rolling-median loss", end / best,
                       LOSS_DIVERGE_FACTOR, ">=", phase=ph)
            ctx.margin("loss_divergence", "peak / best-so-far rolling-median loss", peak / low,
                       LOSS_DIVERGE_FACTOR, ">=", phase=ph, joint=True)
            ctx.margin("loss_divergence", "peak - best-so-far (nats)", peak - low, LOSS_DIVERGE_MIN_RISE,
                       ">=", phase=ph, joint=True)
        if uniform is not None:
            ctx.margin("loss_divergence", "highest rolling-median loss / ln(vocab)", top / uniform,
                       LOSS_DIVERGE_FACTOR, ">=", phase=ph)
        climbed = low > 0 and peak >= LOSS_DIVERGE_FACTOR * low and peak - low >= LOSS_DIVERGE_MIN_RISE
        above_uniform = uniform is not None and top >= LOSS_DIVERGE_FACTOR * uniform
        window = f"(rolling median over {w} logged steps)"
        if i_min < len(v) - 1 and end >= LOSS_DIVERGE_FACTOR * best and end - best >= LOSS_DIVERGE_MIN_RISE:
            out.append(Finding(
                "loss_divergence", "error", None,
                f"{col}{in_phase(ph)} rose from its best {short(best)} (step {int(st[i_min])}) to {short(end)} "
                f"at the end {window}",
                evidence([st[i_min], st[-1]], [best, end], phase=ph, window=w),
                "lower the learning rate, check gradient clipping and for non-finite values; resume "
                "from a checkpoint before the rise"))
        elif climbed or above_uniform:
            what = (f"rose from {short(low)} (step {int(st[i_low])}) to {short(peak)} (step {int(st[i_peak])}, "
                    f"{short(peak / low)}x)" if climbed else
                    f"reached {short(top)} (step {int(st[i_top])}), {short(top / uniform)}x the {short(uniform)} "
                    f"of a uniform guess over the {vocab}-token vocabulary,")
            out.append(Finding(
                "loss_divergence", "warning", None,
                f"{col}{in_phase(ph)} {what} before it recovered to {short(end)} {window}: a transient divergence",
                evidence([st[i_low], st[i_peak], st[i_top], st[-1]], [low, peak, top, end], phase=ph, window=w,
                         peak_over_best=peak / low if low > 0 else None,
                         top_over_uniform=None if uniform is None else top / uniform),
                "lower the learning rate or warm it up (warmup_steps), and clip gradients: the "
                "weights were thrown off and the run relearned from there"))
    return out


@rule
def loss_plateau(ctx: Context) -> list[Finding]:
    """The loss is flat over a sizeable last part of a phase while far above the success bar:
    training has stalled, not converged (the seed's "Loss Not Converging": stuck near 3.3)."""
    col = loss_column(ctx)
    # "far above the bar" is the engine's 0.40 target: a recorded model of someone else has no
    # such bar, and its flat loss may be its converged floor (loss_decreasing judges it instead)
    if col is None or ctx.run.generic:
        return []
    out = []
    for ph, st, v in _finite_phase_series(ctx, col):
        late = _late_window(st, v)
        if late is None or late[2] <= 0:
            continue
        wst, win, a, b = late
        w = len(win)
        change = abs(a - b) / a
        ctx.margin("loss_plateau", "relative change over the last 40%", change, LOSS_FLAT_REL, "<",
                   phase=ph, joint=True)
        ctx.margin("loss_plateau", "loss level / 0.40 bar", b / LOSS_TARGET, LOSS_FAR_ABOVE, ">=",
                   phase=ph, joint=True)
        if change < LOSS_FLAT_REL and b >= LOSS_FAR_ABOVE * LOSS_TARGET:
            out.append(Finding(
                "loss_plateau", "warning", None,
                f"{col}{in_phase(ph)} is flat at {short(b)} over the last {w} logged steps "
                f"({short(100 * change)}% change, {short(a)} -> {short(b)}), {short(b / LOSS_TARGET)}x "
                f"the target {short(LOSS_TARGET)}: training stalled far from converged",
                evidence(wst[[0, w // 2, -1]], win[[0, w // 2, -1]], phase=ph, first_half_median=a,
                         second_half_median=b, relative_change=change, target=LOSS_TARGET),
                "more epochs will not help on their own: check the gradient reaches every part of the "
                "model (routing gates need a straight-through path), the learning rate, and the data"))
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
    ctx.margin("nonfinite", "logged steps with non-finite values or alerts", len(bad_steps) + n_alerts, 0, ">")
    if not bad_steps and not n_alerts:
        return []
    end = ctx.run.end or {}
    failed = end.get("status") == schema.STATUS_FAILED
    last_bad = False
    col = loss_column(ctx)
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
