"""Every default criterion (analyze/default_criteria.toml) at its target from both sides (issue 15).

A value just past the target fails (with the layer and phase of the failure asserted), one just
inside passes. The targets are written here as the documented literals (the README's success
table): moving one in the TOML, or breaking the window that reads it, fails a test.
"""

from __future__ import annotations

import itertools

import pytest

from analyze.criteria import evaluate, verdict
from analyze.loader import load_run
from moh import schema

from .conftest import make_records, write_log

N_STEPS = 100  # 50 logged steps per phase: the "last 50" window is a whole phase
_names = itertools.count()


def records() -> list[dict]:
    return make_records(n_steps=N_STEPS, n_layers=2, n_heads=8, seed=5)


def steps_of(recs):
    return [r for r in recs if r["event"] == schema.STEP]


def results(tmp_path, recs, name):
    """{(layer, phase): status} of criterion `name`, and the verdict."""
    rs = evaluate(load_run(write_log(tmp_path / f"r{next(_names)}" / "run.jsonl", recs)))
    return {(r.layer, r.phase): r.status for r in rs if r.name == name}, verdict(rs)


# ---- threshold_range: every step's threshold_min >= 0.3 and threshold_max <= 0.8 -------------

@pytest.mark.parametrize("field,value,status", [
    ("threshold_max", 0.8, "pass"), ("threshold_max", 0.801, "fail"),
    ("threshold_min", 0.3, "pass"), ("threshold_min", 0.299, "fail"),
])
def test_threshold_range_bounds(tmp_path, field, value, status):
    recs = records()
    steps_of(recs)[33]["layers"][1][field] = value  # one step of layer 1
    got, _ = results(tmp_path, recs, "threshold_range")
    assert got == {(0, None): "pass", (1, None): status}


# ---- complexity_range: every step's complexity in [0, 1] ---------------------------------------

@pytest.mark.parametrize("field,value,status", [
    ("complexity_max", 1.0, "pass"), ("complexity_max", 1.001, "fail"),
    ("complexity_min", 0.0, "pass"), ("complexity_min", -0.001, "fail"),
])
def test_complexity_range_bounds(tmp_path, field, value, status):
    recs = records()
    steps_of(recs)[70]["layers"][0][field] = value
    got, _ = results(tmp_path, recs, "complexity_range")
    assert got == {(0, None): status, (1, None): "pass"}


# ---- average_heads: mean heads_mean over the last 50 steps of each phase in [3, 4] ----------

@pytest.mark.parametrize("heads,status", [(3.01, "pass"), (2.99, "fail"), (3.99, "pass"), (4.01, "fail")])
def test_average_heads_bounds(tmp_path, heads, status):
    recs = records()
    for r in steps_of(recs):
        for lay in r["layers"]:
            lay["heads_mean"] = 3.5
        if r["phase"] == "instruct":
            r["layers"][1]["heads_mean"] = heads
    got, _ = results(tmp_path, recs, "average_heads")
    assert got == {(0, "pretrain"): "pass", (1, "pretrain"): "pass", (0, "instruct"): "pass",
                   (1, "instruct"): status}


# ---- loss: mean lm_loss over the last 50 steps of each phase <= 0.40 -------------------------

@pytest.mark.parametrize("loss,status", [(0.39, "pass"), (0.41, "fail")])
def test_loss_target(tmp_path, loss, status):
    recs = records()
    for r in steps_of(recs):
        r["lm_loss"] = 0.2 if r["phase"] == "instruct" else loss
        r["loss"] = r["lm_loss"] + 0.01
    got, v = results(tmp_path, recs, "loss")
    assert got == {(None, "pretrain"): status, (None, "instruct"): "pass"}
    assert v == ("fail" if status == "fail" else "pass")


# ---- grad_norm: mean grad_norm over the last 50 steps of each phase <= 2.5 --------------------

@pytest.mark.parametrize("norm,status", [(2.45, "pass"), (2.55, "fail")])
def test_grad_norm_target(tmp_path, norm, status):
    recs = records()
    for r in steps_of(recs):
        r["grad_norm"] = norm if r["phase"] == "instruct" else 0.5
    got, _ = results(tmp_path, recs, "grad_norm")
    assert got == {(None, "pretrain"): "pass", (None, "instruct"): status}


# ---- output_quality: the last phase's final exact match >= 0.9 -------------------------------

@pytest.mark.parametrize("em,status", [(0.91, "pass"), (0.89, "fail")])
def test_output_quality_target(tmp_path, em, status):
    recs = make_records(n_steps=N_STEPS, n_layers=2, n_heads=8, seed=5, exact_match=em)
    got, _ = results(tmp_path, recs, "output_quality")
    assert got == {(None, "instruct"): status}


# ---- learning: threshold_mean, complexity_mean and pred_norm each change by > 1e-6 -----------

@pytest.mark.parametrize("change,status", [(0.0, "fail"), (5e-7, "fail"), (4e-6, "pass")])
def test_learning_minimum_change(tmp_path, change, status):
    recs = records()
    for i, r in enumerate(steps_of(recs)):
        r["layers"][1]["pred_norm"] = 2.0 + (change if i == 50 else 0.0)  # float32 step at 2: 2.4e-7
    got, _ = results(tmp_path, recs, "learning")
    assert got == {(0, None): "pass", (1, None): status}


# ---- statistics_logged: every routing stat logged and not identically 0 -----------------------

@pytest.mark.parametrize("entropy,status", [(0.0, "fail"), (1e-9, "pass")])
def test_statistics_logged_zero_versus_one_real_value(tmp_path, entropy, status):
    recs = records()
    for i, r in enumerate(steps_of(recs)):
        r["layers"][0]["entropy"] = entropy if i == 90 else 0.0
    got, _ = results(tmp_path, recs, "statistics_logged")
    assert got == {(0, None): status, (1, None): "pass"}


# ---- the "last" window is the last 50 logged steps of the phase --------------------------------

def test_last_window_averages_exactly_the_last_fifty_steps(tmp_path):
    # 60 pretrain steps: 10 at 30.0, 45 at 0.30, the last 5 at 0.45. Mean of the last 50 = 0.315
    # (pass); of the last 51 = 0.897 (a 30.0 gets in: fail); of the last 7 or fewer >= 0.407 (fail).
    recs = make_records(n_steps=120, n_layers=2, n_heads=8, seed=5)
    pre = [r for r in steps_of(recs) if r["phase"] == "pretrain"]
    assert len(pre) == 60
    for i, r in enumerate(pre):
        r["lm_loss"] = 30.0 if i < 10 else 0.45 if i >= 55 else 0.30
    for r in steps_of(recs):
        if r["phase"] == "instruct":
            r["lm_loss"] = 0.2
    got, _ = results(tmp_path, recs, "loss")
    assert got == {(None, "pretrain"): "pass", (None, "instruct"): "pass"}
