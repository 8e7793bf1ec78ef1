"""complexity_uninformative: late-run rank correlation of complexity with token loss, per layer."""

from __future__ import annotations

import numpy as np
import pytest

from analyze import findings
from tests import synthetic
from analyze.loader import load_run
from analyze.rules.alignment import COMPLEXITY_MIN_CORR
from moh import schema


def _run(tmp_path, corr_by_layer, router="adaptive", heads_corr=0.05, late_only=False, name="run"):
    """A synthetic run whose layers log complexity_loss_corr = corr_by_layer[layer] (+ small noise)."""
    records = synthetic.generate(n_steps=200, n_layers=2, seed=3, router=router)
    rng = np.random.default_rng(0)
    steps = [r for r in records if r["event"] == schema.STEP]
    for k, r in enumerate(steps):
        for lay in r["layers"]:
            if router != "adaptive":
                lay["complexity_loss_corr"] = lay["heads_loss_corr"] = None
                continue
            early = late_only and k < 0.8 * len(steps)
            base = 0.6 if early else corr_by_layer[lay["layer"]]
            lay["complexity_loss_corr"] = float(base + rng.uniform(-0.01, 0.01))
            lay["heads_loss_corr"] = heads_corr
    return load_run(synthetic.write_jsonl(records, tmp_path / name / "run.jsonl"))


def _found(run):
    return [f for f in findings.find_all(run) if f.code == "complexity_uninformative"]


def test_fires_per_layer_below_the_threshold_as_a_warning(tmp_path):
    run = _run(tmp_path, {0: COMPLEXITY_MIN_CORR + 0.05, 1: COMPLEXITY_MIN_CORR - 0.05})
    (f,) = _found(run)
    assert (f.severity, f.layer) == ("warning", 1)
    assert f.evidence["mean"] == pytest.approx(COMPLEXITY_MIN_CORR - 0.05, abs=0.01)
    assert f.evidence["threshold"] == COMPLEXITY_MIN_CORR
    assert f.evidence["heads_loss_corr_mean"] == pytest.approx(0.05)
    # the evidence is the window's own steps and values, the final fifth of the run
    assert len(f.evidence["steps"]) == 10 and f.evidence["steps"][0] == f.evidence["window_first_step"]
    assert all(abs(v - 0.25) <= 0.0101 for v in f.evidence["values"])


def test_near_miss_just_above_the_threshold_is_quiet(tmp_path):
    assert _found(_run(tmp_path, {0: COMPLEXITY_MIN_CORR + 0.015, 1: COMPLEXITY_MIN_CORR + 0.015})) == []


def test_judges_the_late_run_only(tmp_path):
    # well above the threshold for 80% of the run, below it in the final fifth: fires
    assert {f.layer for f in _found(_run(tmp_path, {0: 0.0, 1: 0.0}, late_only=True))} == {0, 1}


def test_negative_correlation_fires_too(tmp_path):
    assert {f.layer for f in _found(_run(tmp_path, {0: -0.2, 1: -0.2}))} == {0, 1}


def test_no_finding_without_the_fields(tmp_path):
    old = load_run(synthetic.write_jsonl(synthetic.generate(n_steps=200, n_layers=2, seed=3),
                                         tmp_path / "old" / "run.jsonl"))
    assert _found(old) == []  # a log written before the fields: nothing to judge
    assert _found(_run(tmp_path, {}, router="moh", name="moh")) == []  # null: no complexity
