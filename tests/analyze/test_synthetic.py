"""The synthetic log generator: schema-valid records, fast path == dict path, knobs do what they say."""

from __future__ import annotations

import json
import math

import pytest

from tests import synthetic
from moh import schema

KNOB_SETS = [
    {},
    {"router": "dense"},
    {"router": "moh"},
    {"nonfinite": True},
    {"missing": ["entropy", "head_load", "router", "z"]},
    {"constant": ["pred_norm"], "silent_zero": ["complexity_mean"], "dead_heads": 2},
    {"head_collapse": "max", "degenerate_range": ["threshold", "complexity"]},
]


@pytest.mark.parametrize("knobs", KNOB_SETS)
def test_records_follow_the_schema(knobs):
    recs = synthetic.generate(n_steps=40, n_layers=3, seed=3, **knobs)
    assert recs[0]["event"] == schema.RUN_START and recs[-1]["event"] == schema.RUN_END
    for r in recs:
        assert schema.missing_fields(r) == [], r["event"]
    steps = [r for r in recs if r["event"] == schema.STEP]
    assert len(steps) == 40 and all(len(r["layers"]) == 3 for r in steps)


@pytest.mark.parametrize("knobs", KNOB_SETS)
def test_fast_path_writes_what_write_jsonl_writes(tmp_path, knobs):
    fast = synthetic.write_synthetic(tmp_path / "fast.jsonl", n_steps=30, seed=5, **knobs)
    slow = synthetic.write_jsonl(synthetic.generate(n_steps=30, seed=5, **knobs), tmp_path / "slow.jsonl")
    a = [json.loads(line) for line in fast.read_text().splitlines()]
    b = [json.loads(line) for line in slow.read_text().splitlines()]
    assert a == b


def test_workers_do_not_change_the_file(tmp_path):
    knobs = dict(n_steps=9000, n_layers=2, seed=2)  # 3 chunks
    one = synthetic.write_synthetic(tmp_path / "one.jsonl", workers=1, **knobs).read_bytes()
    two = synthetic.write_synthetic(tmp_path / "two.jsonl", workers=2, **knobs).read_bytes()
    assert one == two


def test_same_seed_same_records_other_seed_differs():
    assert synthetic.generate(n_steps=20, seed=1) == synthetic.generate(n_steps=20, seed=1)
    assert synthetic.generate(n_steps=20, seed=1) != synthetic.generate(n_steps=20, seed=2)


def test_healthy_run_has_the_advertised_shape():
    steps = [r for r in synthetic.generate(n_steps=600, seed=0) if r["event"] == schema.STEP]
    pre = [r for r in steps if r["phase"] == schema.PHASE_PRETRAIN]
    assert pre[0]["loss"] > 5 and pre[-1]["loss"] < 0.3 and steps[-1]["loss"] < 0.3
    late = steps[-50:]
    assert 0.3 < sum(r["grad_norm"] for r in late) / len(late) < 0.8
    for lay in late[-1]["layers"]:
        assert 3.0 <= lay["heads_mean"] <= 4.0
        assert lay["heads_min"] < lay["heads_mean"] < lay["heads_max"]
        assert 0.3 <= lay["threshold_min"] < lay["threshold_mean"] < lay["threshold_max"] <= 0.8
        assert lay["complexity_max"] - lay["complexity_min"] >= 0.1
        assert math.isclose(sum(lay["head_load"]), lay["heads_mean"], rel_tol=1e-3)
    assert all(v > 0 for v in late[-1]["aux"].values())


def test_nonfinite_steps_are_tagged_on_disk_and_floats_in_memory(tmp_path):
    recs = synthetic.generate(n_steps=30, nonfinite=True)
    bad = [r for r in recs if r["event"] == schema.STEP and r["skipped"]]
    assert bad and all(math.isnan(r["loss"]) and math.isinf(r["grad_norm"]) for r in bad)
    assert any(r["event"] == schema.ALERT and r["code"] == "nonfinite" for r in recs)
    text = synthetic.write_jsonl(recs, tmp_path / "run.jsonl").read_text()
    assert '"loss":"NaN"' in text and '"grad_norm":"Infinity"' in text


def test_heads_restating_complexity_is_exact():
    steps = [r for r in synthetic.generate(n_steps=20, heads_restate_complexity=True) if r["event"] == schema.STEP]
    for r in steps:
        for lay in r["layers"]:
            assert lay["heads_mean"] == pytest.approx(1 + 7 * lay["complexity_mean"], abs=1e-4)


def test_unknown_knob_values_are_refused():
    with pytest.raises(ValueError, match="silent_zero"):
        synthetic.Synthetic(silent_zero=["no_such_stat"])
    with pytest.raises(ValueError, match="router"):
        synthetic.Synthetic(router="sparse")
    with pytest.raises(TypeError):
        synthetic.Synthetic(no_such_knob=True)
