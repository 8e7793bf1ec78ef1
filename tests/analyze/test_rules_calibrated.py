"""The rules issue 11 added or changed, each on both sides of its threshold.

Every log here is hand-built records (conftest.make_records) with the one series under test set
to closed-form values: a linear or piecewise-linear curve whose trend, medians and window means
are known exactly, so each test states the statistic it expects from arithmetic, not from the
code under test. Each pair is a trigger just past the threshold and a near miss just inside it;
severity and layer are asserted.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from analyze import findings
from analyze.loader import load_run
from analyze.rules import allocation, gradients, loss, predictors

from .conftest import make_records, write_log

HERE = Path(__file__).resolve().parent


def _steps(recs):
    return [r for r in recs if r["event"] == "step"]


def _found(tmp_path, recs, code, name="run"):
    run = load_run(write_log(tmp_path / name / "run.jsonl", recs))
    return [f for f in findings.find_all(run) if f.code == code]


# ---- grad_norm_rising --------------------------------------------------------------------------
# One phase of 18 logged steps; the rule reads its second half (9 steps), thirds of 3.
# grad norm there: a + b*i (i = 0..8): Kendall tau 1, Theil-Sen slope b, start level (median of
# the first third) a + b, so rise = 8b / (a + b); end level (median of the last third) a + 7b.
# loss there: 3.3 - c*i: medians 3.3 - c and 3.3 - 7c, so loss drop = 6c / (3.3 - c).

def _rising(a: float, rise: float, loss_drop: float, tau_noise: bool = False) -> list[dict]:
    b = rise * a / (8 - rise)
    c = 3.3 * loss_drop / (6 + loss_drop)
    recs = make_records(n_steps=18, phases=("pretrain",))
    for j, r in enumerate(_steps(recs)):
        i = j - 9
        if i < 0:  # first half: the loss falls from 7 to 3.3, the norm wanders
            r["lm_loss"] = r["loss"] = 7.0 - (7.0 - 3.3) * j / 9
            r["grad_norm"] = a * (1.5 if j % 2 else 0.8)
        else:
            r["grad_norm"] = a + b * i
            r["lm_loss"] = r["loss"] = 3.3 - c * i
    return recs


def test_grad_norm_rising_fires_just_past_each_bound(tmp_path):
    (f,) = _found(tmp_path, _rising(30.0, rise=0.16, loss_drop=0.09), "grad_norm_rising")
    assert f.severity == "warning" and f.layer is None
    assert f.evidence["kendall_tau"] == pytest.approx(1.0)
    assert f.evidence["rise"] == pytest.approx(0.16, rel=1e-6)
    assert f.evidence["loss_drop"] == pytest.approx(0.09, rel=1e-6)
    assert f.evidence["phase"] == "pretrain"


@pytest.mark.parametrize("a, rise, loss_drop, why", [
    (30.0, 0.14, 0.09, "rise below 15%"),
    (30.0, 0.16, 0.11, "loss still improving by > 10%"),
])
def test_grad_norm_rising_near_misses(tmp_path, a, rise, loss_drop, why):
    assert _found(tmp_path, _rising(a, rise, loss_drop), "grad_norm_rising") == [], why


def test_grad_norm_rising_needs_a_norm_above_the_bar(tmp_path):
    # end level a + 7b with b = 0.16a/7.84: 2.6 just above the 2.5 bar, 2.4 just below
    k = 1 + 7 * 0.16 / 7.84
    assert len(_found(tmp_path, _rising(2.6 / k, 0.16, 0.09), "grad_norm_rising", "above")) == 1
    assert _found(tmp_path, _rising(2.4 / k, 0.16, 0.09), "grad_norm_rising", "below") == []


def test_grad_norm_rising_needs_a_monotone_trend(tmp_path):
    # alternate +-: the same end points, but half the pairs fall: tau well below 0.6
    recs = _rising(30.0, 0.3, 0.0)
    for j, r in enumerate(_steps(recs)):
        if j >= 9 and j % 2:
            r["grad_norm"] = 30.0 + 0.5 * (j - 9)
    assert _found(tmp_path, recs, "grad_norm_rising") == []


# ---- loss_plateau --------------------------------------------------------------------------------
# One phase of 20 logged steps: the window is the last 8 (40%), halves of 4. The loss is `a` on
# the window's first half and `b` on its second: change |a - b| / a, level b / 0.40.

def _plateau(a: float, b: float) -> list[dict]:
    recs = make_records(n_steps=20, phases=("pretrain",))
    for j, r in enumerate(_steps(recs)):
        r["lm_loss"] = r["loss"] = 7.0 - (7.0 - a) * j / 11 if j < 12 else (a if j < 16 else b)
    return recs


def test_loss_plateau_fires_flat_and_far_above_the_bar(tmp_path):
    (f,) = _found(tmp_path, _plateau(1.0, 0.96), "loss_plateau")
    assert f.severity == "warning" and f.layer is None
    assert f.evidence["relative_change"] == pytest.approx(0.04, rel=1e-6)
    assert f.evidence["second_half_median"] == pytest.approx(0.96)


@pytest.mark.parametrize("a, b, why", [
    (1.0, 0.94, "6% change: still moving"),
    (0.78, 0.77, "1.93x the bar: not far above it"),
])
def test_loss_plateau_near_misses(tmp_path, a, b, why):
    assert _found(tmp_path, _plateau(a, b), "loss_plateau") == [], why


def test_loss_plateau_level_just_past_twice_the_bar(tmp_path):
    (f,) = _found(tmp_path, _plateau(0.83, 0.82), "loss_plateau")  # 2.05x the 0.40 bar
    assert f.severity == "warning"


def test_loss_plateau_thresholds_are_the_documented_ones():
    assert (loss.LOSS_TARGET, loss.LOSS_FLAT_REL, loss.LOSS_FAR_ABOVE, loss.LOSS_PLATEAU_SHARE) == (0.40, 0.05, 2.0, 0.4)


# ---- predictor_growth ------------------------------------------------------------------------------
# 100 logged steps in one phase: the norm rises linearly 0.25 -> c over steps 0-50, stays at c to
# step 75, then climbs linearly, v(i) = c (1 + k (i - 75)) for i >= 75. Levels are means over 5
# steps: the last quarter's start (steps 75-79) is c (1 + 2k), the end (95-99) c (1 + 22k), so
# the late growth is 20k / (1 + 2k) and the final level c (1 + 22k); given both, k = g / (20 - 2g)
# and c = level / (1 + 22k).

def _pred(level: float, growth: float, layer: int = 1) -> list[dict]:
    k = growth / (20 - 2 * growth)
    c = level / (1 + 22 * k)
    recs = make_records(n_steps=100, phases=("pretrain",))
    for i, r in enumerate(_steps(recs)):
        v = 0.25 + (c - 0.25) * min(i, 50) / 50 if i < 75 else c * (1 + k * (i - 75))
        for lay in r["layers"]:
            lay["pred_norm"] = v if lay["layer"] == layer else 1.0 + 0.001 * (i % 3)
    return recs


def test_predictor_growth_fires_high_and_still_rising(tmp_path):
    (f,) = _found(tmp_path, _pred(2.6, 0.025), "predictor_growth")
    assert f.severity == "warning" and f.layer == 1
    assert f.evidence["level"] == pytest.approx(2.6, rel=1e-5)
    assert f.evidence["late_growth"] == pytest.approx(0.025, rel=1e-5)
    assert f.evidence["phase"] == "pretrain"


@pytest.mark.parametrize("level, growth, fires, why", [
    (2.55, 0.021, True, "just past both bounds"),
    (2.45, 0.50, False, "still climbing fast, but below 2.5: a healthy run's norm ends near 1"),
    (40.0, 0.019, False, "far above 2.5 but levelled off: +1.9% over the last quarter"),
    (1.16, 0.029, False, "the worst healthy default run: level 1.16, +2.9% late"),
])
def test_predictor_growth_needs_both_level_and_late_growth(tmp_path, level, growth, fires, why):
    found = _found(tmp_path, _pred(level, growth), "predictor_growth")
    assert [(f.severity, f.layer) for f in found] == ([("warning", 1)] if fires else []), why


def test_predictor_growth_from_a_zero_initialised_predictor(tmp_path):
    # 0 for the first 10 steps, then 0.05 per step to 4.5 at step 99: +12% over the last quarter
    recs = make_records(n_steps=100, phases=("pretrain",))
    for i, r in enumerate(_steps(recs)):
        for lay in r["layers"]:
            lay["pred_norm"] = 0.05 * max(i - 9, 0)
    found = _found(tmp_path, recs, "predictor_growth")
    assert [(f.severity, f.layer) for f in found] == [("warning", 0), ("warning", 1)]
    assert found[0].evidence["ratio"] is None and "from 0" in found[0].message
    assert found[0].evidence["level"] == pytest.approx(0.05 * 88, rel=1e-5)          # steps 95-99
    assert found[0].evidence["late_growth"] == pytest.approx(4.4 / 3.4 - 1, rel=1e-5)  # 75-79: 3.4


def test_predictor_growth_thresholds_are_the_documented_ones():
    assert (predictors.PRED_NORM_LEVEL, predictors.PRED_LATE_GROWTH) == (2.5, 0.02)


def test_predictor_growth_judges_the_end_of_each_phase(tmp_path):
    # the engine's shape at a high level: pre-training rises 0.25 -> 4 and levels off; instruction
    # tuning (a new LR schedule) steps it up to 4.4 early and levels off again. Over the whole
    # run's last quarter it still grows (the step up), but at the end of each phase it does not.
    recs = make_records(n_steps=200)   # 100 pre-training, 100 instruction steps
    for i, r in enumerate(_steps(recs)):
        if i < 100:
            v = 0.25 + 3.75 * min(1.0, i / 50)
        else:
            v = 4.0 + 0.4 * min(1.0, (i - 100) / 20)
        for lay in r["layers"]:
            lay["pred_norm"] = v
    assert _found(tmp_path, recs, "predictor_growth", "levelled") == []
    # the same run, still climbing through the last quarter of instruction tuning: 4 + 0.04 (i - 100),
    # 7.08 at steps 175-179 and 7.88 at 195-199: +11.3% there
    for i, r in enumerate(_steps(recs)):
        for lay in r["layers"]:
            lay["pred_norm"] = 0.25 + 3.75 * min(1.0, i / 50) if i < 100 else 4.0 + 0.04 * (i - 100)
    found = _found(tmp_path, recs, "predictor_growth", "climbing")
    assert [(f.severity, f.layer, f.evidence["phase"]) for f in found] == [("warning", 0, "instruct"),
                                                                         ("warning", 1, "instruct")]
    assert found[0].evidence["late_growth"] == pytest.approx(0.8 / 7.08, rel=1e-5)


def test_predictor_growth_keeps_the_reference_log_and_spares_the_healthy_sample():
    ref = HERE.parents[2] / "shared" / "rustgpt" / "logs" / "e70e746_build_run_after_fix.txt"
    if not ref.exists():
        pytest.skip("../shared/rustgpt not next to this checkout")
    (f,) = [f for f in findings.find_all(load_run(ref)) if f.code == "predictor_growth"]
    # 1.9 -> 13.6 over 200 epochs, +5.1% over pre-training's last quarter (10.3 -> 10.9)
    assert f.layer is None and f.evidence["phase"] == "pretrain"
    assert f.evidence["level"] == pytest.approx(13.56, abs=0.01)
    assert f.evidence["late_growth"] == pytest.approx(0.051, abs=0.001)
    healthy = load_run(HERE.parents[1] / "sample_logs" / "healthy_adaptive.jsonl")
    assert "predictor_growth" not in {f.code for f in findings.find_all(healthy)}


# ---- allocation: threshold_pinned, uniform_allocation, budget_miss ------------------------------------

def _adaptive(n: int = 50, **config) -> list[dict]:
    recs = make_records(n_steps=n)
    recs[0]["config"].update({"tau_min": 0.3, "tau_max": 0.8, "target_heads": 3.5, "k_min": 1.0, **config})
    return recs


def _set_layer(recs, layer, **values):
    for r in _steps(recs):
        for lay in r["layers"]:
            if lay["layer"] == layer:
                lay.update(values)
    return recs


@pytest.mark.parametrize("tau_min, fires", [(0.76, True), (0.74, False)])  # room 0.04 | 0.06 vs 0.05
def test_threshold_pinned_by_the_configured_range(tmp_path, tau_min, fires):
    recs = _adaptive(tau_min=tau_min)
    found = _found(tmp_path, recs, "threshold_pinned")
    if fires:
        (f,) = found
        assert f.severity == "warning" and f.layer is None
        assert f.evidence["room"] == pytest.approx(0.8 - tau_min)
    else:
        assert found == []


@pytest.mark.parametrize("spread, fires", [(0.019, True), (0.021, False)])
def test_threshold_pinned_by_the_per_token_spread(tmp_path, spread, fires):
    recs = _set_layer(_adaptive(), 0, threshold_mean=0.55, threshold_min=0.55 - spread / 2,
                      threshold_max=0.55 + spread / 2)
    found = _found(tmp_path, recs, "threshold_pinned")
    if fires:
        (f,) = found
        assert f.severity == "warning" and f.layer == 0
        assert f.evidence["median_spread"] == pytest.approx(spread, rel=1e-4)
    else:
        assert found == []


@pytest.mark.parametrize("mean, fires", [(0.7915, True), (0.7885, False)])  # 0.0085 | 0.0115 from 0.8
def test_threshold_pinned_at_a_bound(tmp_path, mean, fires):
    recs = _set_layer(_adaptive(), 1, threshold_mean=mean, threshold_min=mean - 0.2, threshold_max=0.8)
    found = _found(tmp_path, recs, "threshold_pinned")
    assert [(f.severity, f.layer) for f in found] == ([("warning", 1)] if fires else [])


@pytest.mark.parametrize("std, fires", [(0.09, True), (0.11, False)])
def test_uniform_allocation_on_both_sides(tmp_path, std, fires):
    recs = _set_layer(_adaptive(), 1, heads_std=std, heads_mean=3.5, heads_min=3, heads_max=4)
    found = _found(tmp_path, recs, "uniform_allocation")
    if fires:
        (f,) = found
        assert f.severity == "warning" and f.layer == 1
        assert f.evidence["mean_heads_std"] == pytest.approx(std)
    else:
        assert found == []


def test_uniform_allocation_leaves_topk_routers_and_collapse_alone(tmp_path):
    recs = _set_layer(_adaptive(), 0, heads_std=0.0, heads_mean=1.0, heads_min=1, heads_max=1)
    assert _found(tmp_path, recs, "uniform_allocation", "collapse") == []  # head_collapse's case
    moh = make_records(n_steps=50, router="moh")
    _set_layer(moh, 0, heads_std=0.0, heads_mean=4.0, heads_min=4, heads_max=4)
    assert _found(tmp_path, moh, "uniform_allocation", "moh") == []


@pytest.mark.parametrize("heads, fires", [(4.05, True), (3.95, False), (2.95, True), (3.05, False)])
def test_budget_miss_on_both_sides_of_half_a_head(tmp_path, heads, fires):
    recs = _set_layer(_adaptive(), 1, heads_mean=heads)
    found = _found(tmp_path, recs, "budget_miss")
    if fires:
        (f,) = found
        assert f.severity == "warning" and f.layer == 1
        assert f.evidence["mean_heads"] == pytest.approx(heads) and f.evidence["target_heads"] == 3.5
    else:
        assert found == []


def test_budget_miss_reads_the_runs_own_target(tmp_path):
    recs = _set_layer(_set_layer(_adaptive(target_heads=4.0), 1, heads_mean=4.05), 0, heads_mean=4.0)
    assert _found(tmp_path, recs, "budget_miss") == []


def test_allocation_thresholds_are_the_documented_ones():
    assert (allocation.THRESHOLD_MIN_ROOM, allocation.THRESHOLD_MIN_SPREAD, allocation.THRESHOLD_BOUND_TOL,
            allocation.UNIFORM_HEADS_STD, allocation.BUDGET_TOL) == (0.05, 0.02, 0.01, 0.1, 0.5)
    assert (gradients.GRAD_RISE_TAU, gradients.GRAD_RISE_MIN, gradients.GRAD_RISE_LOSS_DROP) == (0.6, 0.15, 0.10)


# ---- the seed's before-fix state, in the reference trainer's format -------------------------------

def test_before_fix_log_gets_the_gradient_and_the_loss_finding():
    """tests/analyze/data/rustgpt_before_fix.txt: ten epoch lines written for this project (threshold
    0.00, loss 7.41 -> 3.25 stalling, grad norm 36.4 -> 60.18)."""
    found = findings.find_all(load_run(HERE / "data" / "rustgpt_before_fix.txt"))
    codes = {f.code for f in found}
    assert {"silent_zero", "constant_stat", "vacuous_aux"} <= codes  # what it got before issue 11
    assert codes & {"grad_norm_rising", "grad_explosion"} and codes & {"loss_plateau", "loss_not_converging"}
    (g,) = [f for f in found if f.code == "grad_norm_rising"]
    assert g.severity == "warning" and g.evidence["kendall_tau"] == pytest.approx(1.0)
    (lp,) = [f for f in found if f.code == "loss_plateau"]
    # last 4 epochs: 3.33 3.30 | 3.27 3.25 -> medians 3.315 and 3.26
    assert lp.evidence["relative_change"] == pytest.approx((3.315 - 3.26) / 3.315, rel=1e-5)


# ---- loss_divergence: transient climbs and the uniform-guess bound -----------------------------------
# One phase of 60 logged steps (rolling median window 3): a flat loss with a bump of 5 steps in
# the middle; the median of any 3 consecutive values inside the bump is the bump's value.

def _bump(base: float, bump: float, vocab: int | None = None, phases=("pretrain",)) -> list[dict]:
    recs = make_records(n_steps=60, phases=phases)
    if vocab is not None:
        recs[0]["data"] = {"vocab_size": vocab}
    for j, r in enumerate(_steps(recs)):
        r["lm_loss"] = r["loss"] = bump if 28 <= j < 33 else base
    return recs


@pytest.mark.parametrize("bump, fires", [(1.52, True), (1.48, False)])  # x1.5 the best so far
def test_loss_divergence_transient_climb(tmp_path, bump, fires):
    found = _found(tmp_path, _bump(1.0, bump), "loss_divergence")
    if fires:
        (f,) = found
        assert f.severity == "warning" and f.layer is None
        assert f.evidence["peak_over_best"] == pytest.approx(bump)
    else:
        assert found == []


def test_loss_divergence_transient_needs_a_tenth_of_a_nat(tmp_path):
    assert _found(tmp_path, _bump(0.1, 0.19), "loss_divergence", "small") == []   # 1.9x but +0.09
    assert len(_found(tmp_path, _bump(0.1, 0.21), "loss_divergence", "big")) == 1  # 2.1x and +0.11


@pytest.mark.parametrize("top, fires", [(1.52 * math.log(1000), True), (1.48 * math.log(1000), False)])
def test_loss_divergence_above_a_uniform_guess_in_the_first_phase(tmp_path, top, fires):
    # the loss starts at the bump (already thrown off), then falls to 3: no lower value before it
    recs = make_records(n_steps=60, phases=("pretrain",))
    recs[0]["data"] = {"vocab_size": 1000}
    for j, r in enumerate(_steps(recs)):
        r["lm_loss"] = r["loss"] = top if j < 10 else 3.0
    found = _found(tmp_path, recs, "loss_divergence")
    if fires:
        (f,) = found
        assert f.severity == "warning"
        assert f.evidence["top_over_uniform"] == pytest.approx(top / math.log(1000), rel=1e-5)
    else:
        assert found == []


def test_loss_divergence_uniform_bound_skips_later_phases(tmp_path):
    recs = make_records(n_steps=120, phases=("pretrain", "instruct"))
    recs[0]["data"] = {"vocab_size": 1000}
    for j, r in enumerate(_steps(recs)):
        first = r["phase"] == "pretrain"
        r["lm_loss"] = r["loss"] = (5.0 if first else (2.0 * math.log(1000) if j < 70 else 1.0))
    assert _found(tmp_path, recs, "loss_divergence") == []


# ---- loss_not_converging: stopped far above the bar, still falling -----------------------------------
# One phase of 20 logged steps: a steady fall, then the late window (last 8) at a in its first half
# and b in its second: relative fall (a - b) / a, level b / 0.40.

@pytest.mark.parametrize("a, b, fires", [
    (1.0, 0.94, True),     # 6% fall at 2.35x the bar
    (1.0, 0.96, False),    # 4%: flat (loss_plateau's case)
    (0.84, 0.78, False),   # 7% fall but 1.95x the bar: not far above it
    (0.88, 0.82, True),    # 6.8% fall at 2.05x
])
def test_loss_not_converging_far_above_and_still_falling(tmp_path, a, b, fires):
    found = [f for f in _found(tmp_path, _plateau(a, b), "loss_not_converging") if "second_half_median" in f.evidence]
    if fires:
        (f,) = found
        assert f.severity == "warning" and f.layer is None
        assert f.evidence["relative_fall"] == pytest.approx((a - b) / a, rel=1e-5)
    else:
        assert found == []
