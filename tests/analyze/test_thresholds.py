"""Every finding rule pinned at its threshold from both sides (issue 15 item 1).

For each rule: a log just past the threshold (the finding, its severity and layer asserted) and a
near miss just inside it (no finding). The inputs are placed from the thresholds documented in
docs/findings.md; the expected sides below are written as literal values, never read from the
code, so moving a threshold (a CV limit 0.5 -> 0.8, a dead-head share 0.1 -> 0.01, ...) or
downgrading a severity fails a test here. Not here: predictor_growth (both sides of its two bounds
in tests/analyze/test_rules_calibrated.py) and the allocation rule (tests/analyze/test_rule_alignment.py).

Logs are real files: tests.analyze.conftest.make_records with the fields under test overwritten,
written with the schema's encoder and read with the real loader.
"""

from __future__ import annotations

import itertools
import math

import pytest

from analyze.findings import find_all
from analyze.loader import load_run
from moh import schema

from .conftest import make_records, write_log

N_STEPS = 100  # two phases of 50 logged steps; the final window of the head rules is 20 steps
H = 8
_names = itertools.count()


def records(**kw) -> list[dict]:
    return make_records(n_steps=N_STEPS, n_layers=2, n_heads=H, seed=kw.pop("seed", 3), **kw)


def steps_of(recs: list[dict]) -> list[dict]:
    return [r for r in recs if r["event"] == schema.STEP]


def found(tmp_path, recs: list[dict], code: str) -> list[tuple[str, int | None]]:
    """(severity, layer) of every `code` finding on the log, as the real loader reads it."""
    path = write_log(tmp_path / f"run{next(_names)}" / "run.jsonl", recs)
    return [(f.severity, f.layer) for f in find_all(load_run(path)) if f.code == code]


def evidence(tmp_path, recs: list[dict], code: str) -> list[dict]:
    path = write_log(tmp_path / f"run{next(_names)}" / "run.jsonl", recs)
    return [f.evidence for f in find_all(load_run(path)) if f.code == code]


# ---- head_collapse: >= 90% of the final fifth at an end of the head range (warning) ----------

@pytest.mark.parametrize("n_pinned,expected", [(18, [("warning", 1)]), (17, [])])  # 90% / 85% of 20
@pytest.mark.parametrize("end", ["minimum", "maximum"])
def test_head_collapse_at_ninety_percent_of_the_final_window(tmp_path, n_pinned, expected, end):
    recs = records()
    for r in steps_of(recs)[-n_pinned:]:
        lay = r["layers"][1]
        h = 1 if end == "minimum" else H  # k_min 1 (default), H = 8
        lay.update(heads_mean=float(h), heads_min=h, heads_max=h, heads_std=0.0)
    assert found(tmp_path, recs, "head_collapse") == expected


# ---- load_imbalance: coefficient of variation of the final head loads > 0.5 (warning) ---------

@pytest.mark.parametrize("cv,expected", [(0.52, [("warning", 1)]), (0.48, [])])
def test_load_imbalance_at_cv_one_half(tmp_path, cv, expected):
    recs = records()
    loads = [0.5 * (1 + cv)] * 4 + [0.5 * (1 - cv)] * 4  # population std / mean = cv exactly
    for r in steps_of(recs):
        r["layers"][1]["head_load"] = list(loads)
    got = found(tmp_path, recs, "load_imbalance")
    assert got == expected
    assert found(tmp_path, recs, "dead_heads") == []  # uneven, but every head alive


# ---- dead_heads: a head's share of the final load < 1/(10 H) = 1.25% at H = 8 (warning) ---------

@pytest.mark.parametrize("load,expected", [
    (0.04, [("warning", 0)]),   # share 0.04 / 3.54 = 1.13%
    (0.05, []),                 # share 0.05 / 3.55 = 1.41%
])
def test_dead_head_below_one_tenth_of_a_fair_share(tmp_path, load, expected):
    recs = records()
    for r in steps_of(recs):
        r["layers"][0]["head_load"] = [0.5] * 5 + [load] + [0.5] * 2
    assert found(tmp_path, recs, "dead_heads") == expected
    if expected:
        assert evidence(tmp_path, recs, "dead_heads")[0]["heads"] == [5]


# ---- aux_dominates: weighted aux > 30% of the total loss over the last tenth (warning) -------

@pytest.mark.parametrize("share,expected", [(0.31, [("warning", None)]), (0.29, [])])
def test_aux_dominates_at_thirty_percent(tmp_path, share, expected):
    recs = records()
    for r in steps_of(recs):
        r["loss"], r["lm_loss"] = 1.0, 1.0 - share
        r["aux_weighted"] = {"load_balance": share - 0.01, "z": 0.01, "complexity": 0.0, "budget": 0.0}
    assert found(tmp_path, recs, "aux_dominates") == expected


# ---- loss_not_converging: a phase whose loss falls < 10% (warning) ---------------------------------

def _phase_profile(n: int, start: float, end: float) -> list[float]:
    """start for the first tenth, a straight fall to `end` by 70% of the phase, then flat (converged)."""
    a, b = n // 10, int(0.7 * n)
    return [start if i < a else end if i >= b else start + (end - start) * (i - a) / (b - a) for i in range(n)]


@pytest.mark.parametrize("end,expected", [
    (2.73, [("warning", None)]),  # 3.0 -> 2.73: 9% lower
    (2.67, []),                   # 3.0 -> 2.67: 11% lower, converged
])
def test_loss_not_converging_at_a_ten_percent_drop(tmp_path, end, expected):
    recs = records()
    steps = steps_of(recs)
    for phase, (start, stop) in (("pretrain", (3.0, end)), ("instruct", (2.0, 0.5))):
        mine = [r for r in steps if r["phase"] == phase]
        for r, v in zip(mine, _phase_profile(len(mine), start, stop)):
            r["lm_loss"], r["loss"] = v, v + 0.01
    assert found(tmp_path, recs, "loss_not_converging") == expected
    if expected:
        assert evidence(tmp_path, recs, "loss_not_converging")[0]["phase"] == "pretrain"


# ---- loss_divergence: ending >= 1.5x the best smoothed loss and >= 0.1 above it (error) ------

@pytest.mark.parametrize("best,end,expected", [
    (1.0, 1.55, [("error", None)]),  # 1.55x, +0.55
    (1.0, 1.45, []),                 # 1.45x: near miss on the factor
    (0.1, 0.21, [("error", None)]),  # 2.1x, +0.11
    (0.1, 0.19, []),                 # 1.9x but only +0.09: near miss on the minimum rise
])
def test_loss_divergence_factor_and_minimum_rise(tmp_path, best, end, expected):
    recs = records()
    steps = steps_of(recs)
    for phase in ("pretrain", "instruct"):
        mine = [r for r in steps if r["phase"] == phase]
        vals = _phase_profile(len(mine), 3.0, best)
        if phase == "instruct":
            vals[-5:] = [end] * 5  # the rolling median (3 steps) ends at `end`
        for r, v in zip(mine, vals):
            r["lm_loss"], r["loss"] = v, v + 0.01
    assert found(tmp_path, recs, "loss_divergence") == expected


# ---- grad_explosion: a spike >= 10x the recent median and > 2.5 (warning; >= 100x error) -------

@pytest.mark.parametrize("base,factor,expected", [
    (0.5, 10.5, [("warning", None)]),
    (0.5, 9.5, []),                     # 4.75 > 2.5 but only 9.5x
    (0.5, 101.0, [("error", None)]),
    (0.5, 99.0, [("warning", None)]),   # a spike, not yet an error
    (0.2, 12.0, []),                    # 12x but 2.4 <= 2.5: harmless
    (0.25, 12.0, [("warning", None)]),  # 12x and 3.0
])
def test_grad_explosion_spike_factor_error_factor_and_floor(tmp_path, base, factor, expected):
    recs = records()
    steps = steps_of(recs)
    for r in steps:
        r["grad_norm"] = r["grad_norm_clipped"] = base
    steps[30]["grad_norm"] = base * factor
    assert found(tmp_path, recs, "grad_explosion") == expected


# ---- router_grad_zero: routing grad <= 1e-8 x total on every step (error), some steps (warning) --

@pytest.mark.parametrize("value,n_zero,expected", [
    (0.9e-8, "all", [("error", None)]),
    (1.1e-8, "all", []),
    (0.9e-8, "some", [("warning", None)]),
])
def test_router_grad_zero_relative_threshold_and_severity(tmp_path, value, n_zero, expected):
    recs = records()
    steps = steps_of(recs)
    for i, r in enumerate(steps):
        r["grad_norm"] = 1.0
        if n_zero == "all" or i < 10:
            r["grad_norms"]["complexity"] = value
    assert found(tmp_path, recs, "router_grad_zero") == expected


# ---- redundant_stat: one stat an exact affine function of another (error) ---------------------

@pytest.mark.parametrize("offset,expected", [
    (0.0, [("error", 1)]),      # heads = 1 + 7 c exactly (float32 storage only)
    (2e-6, [("error", 1)]),     # one step off by less than the rounding bound (~6e-6 here)
    (2e-5, []),                 # one step off by ~3x the rounding bound: a real deviation
])
def test_redundant_stat_exact_affine_versus_one_step_off(tmp_path, offset, expected):
    recs = records()
    for i, r in enumerate(steps_of(recs)):
        lay = r["layers"][1]
        c = 0.3 + 0.004 * i + 0.001 * math.sin(i)  # full precision, not affine in the step
        lay["complexity_mean"] = c
        lay["heads_mean"] = 1 + 7 * c + (offset if i == 40 else 0.0)
    assert found(tmp_path, recs, "redundant_stat") == expected


# ---- silent_zero: a routing stat exactly 0 (|v| <= 1e-12) on every logged step (error) -------

@pytest.mark.parametrize("values,expected", [
    ((0.0, 0.0), [("error", 1)]),
    ((1e-13, 0.0), [("error", 1)]),   # below 1e-12: still a placeholder
    ((1e-11, 0.0), []),               # one step with a real (tiny) value
])
def test_silent_zero_on_every_step(tmp_path, values, expected):
    recs = records()
    for i, r in enumerate(steps_of(recs)):
        r["layers"][1]["entropy"] = values[0] if i == 40 else values[1]
    assert found(tmp_path, recs, "silent_zero") == expected


# ---- constant_stat: range <= 1e-7 x |mean| over the run (warning) ------------------------------

@pytest.mark.parametrize("other,expected", [
    (0.5, [("warning", 1)]),
    (0.5 + 2 ** -24, []),   # one float32 step away on one step: relative range 1.19e-7 > 1e-7
])
def test_constant_stat_at_float32_resolution(tmp_path, other, expected):
    recs = records()
    for i, r in enumerate(steps_of(recs)):
        r["layers"][1]["threshold_mean"] = other if i == 60 else 0.5
    assert found(tmp_path, recs, "constant_stat") == expected


# ---- nonfinite: skipped -> warning; not skipped, last step, or failed run -> error --------------

@pytest.mark.parametrize("case,expected", [
    ("skipped", [("warning", None)]),
    ("not_skipped", [("error", None)]),
    ("last_step", [("error", None)]),
    ("inf_layer_stat", [("error", None)]),
    ("finite", []),
    ("lm_loss_null_everywhere", []),   # never logged is not non-finite
])
def test_nonfinite_severity(tmp_path, case, expected):
    recs = records()
    steps = steps_of(recs)
    if case == "skipped":
        steps[30].update(loss=math.nan, lm_loss=math.nan, skipped=True)
    elif case == "not_skipped":
        steps[30].update(loss=math.nan, lm_loss=math.nan, skipped=False)
    elif case == "last_step":
        steps[-1].update(loss=math.nan, lm_loss=math.nan, skipped=True)
    elif case == "inf_layer_stat":
        steps[30]["layers"][0]["entropy"] = math.inf
    elif case == "lm_loss_null_everywhere":
        for r in steps:
            r["lm_loss"] = None
    assert found(tmp_path, recs, "nonfinite") == expected


# ---- vacuous_aux: an aux term 0 on every step (warning; info when its weight is 0) ------------

@pytest.mark.parametrize("spoiler,weight,expected", [
    (0.0, None, [("warning", None)]),
    (0.0, 0.0, [("info", None)]),
    (1e-9, None, []),                 # one step with a real value
])
def test_vacuous_aux(tmp_path, spoiler, weight, expected):
    recs = records()
    if weight is not None:
        recs[0]["config"]["budget_weight"] = weight
    for i, r in enumerate(steps_of(recs)):
        r["aux"]["budget"] = spoiler if i == 20 else 0.0
    assert found(tmp_path, recs, "vacuous_aux") == expected


# ---- loss_not_converging, second branch: the last tenth still gives >= 10% of the progress ----

@pytest.mark.parametrize("d,expected", [(0.063, [("warning", None)]), (0.057, [])])  # 10.5% / 9.5% of 0.6
def test_loss_still_falling_at_the_end_of_a_phase(tmp_path, d, expected):
    recs = records()
    for phase in ("pretrain", "instruct"):
        mine = [r for r in steps_of(recs) if r["phase"] == phase]
        # head (first 5) 0.9, tail (last 5) 0.3 (under the 0.4 bar): drop 0.6; the 5 before the tail at 0.3 + d
        vals = [0.9] * 5 + [0.36] * 35 + [0.3 + (d if phase == "instruct" else 0.0)] * 5 + [0.3] * 5
        for r, v in zip(mine, vals):
            r["lm_loss"], r["loss"] = v, v + 0.01
    assert found(tmp_path, recs, "loss_not_converging") == expected
    if expected:
        assert evidence(tmp_path, recs, "loss_not_converging")[0]["phase"] == "instruct"


# ---- degenerate_range: min == max on >= half the steps (warning), on all of them (error) -----

@pytest.mark.parametrize("k,expected", [(100, [("error", 1)]), (50, [("warning", 1)]), (49, [])])
def test_degenerate_range_fraction(tmp_path, k, expected):
    recs = records()
    for r in steps_of(recs)[:k]:
        lay = r["layers"][1]
        lay["threshold_min"] = lay["threshold_max"] = lay["threshold_mean"]
    assert found(tmp_path, recs, "degenerate_range") == expected


# ---- clip_saturation: at the clip on >= 50% of a phase's second half with a median >= 2x the clip
# (warning), or on >= 25% of it (info) ----------------------------------------------------------

@pytest.mark.parametrize("m,norm,expected", [
    (13, 2.4, [("warning", None)]),   # 13 of 25: 52%, median 2.4x the clip
    (13, 1.9, [("info", None)]),      # 52% but the median is only 1.9x the clip
    (12, 2.4, [("info", None)]),      # 48%
    (7, 2.4, [("info", None)]),       # 28%
    (6, 2.4, []),                     # 24%
])
def test_clip_saturation_fractions(tmp_path, m, norm, expected):
    recs = records()
    recs[0]["config"]["grad_clip"] = 1.0
    instruct = [r for r in steps_of(recs) if r["phase"] == "instruct"]
    for r in steps_of(recs):
        r["grad_norm"] = 0.5
    for r in instruct[-m:]:
        r["grad_norm"] = norm
    assert found(tmp_path, recs, "clip_saturation") == expected
