"""Evidence for people: every finding names the steps and the values it rests on."""

from __future__ import annotations

import json

import pytest

from analyze import findings

from .test_findings import TRIGGERS, run_of


@pytest.mark.parametrize("code", sorted(TRIGGERS))
def test_every_finding_carries_steps_and_values(tmp_path, code):
    found = [f for f in findings.find_all(run_of(tmp_path, **TRIGGERS[code])) if f.code == code]
    assert found
    for f in found:
        ev = json.loads(json.dumps(f.to_dict()["evidence"], allow_nan=False))
        assert ev["steps"], (code, ev)
        assert len(ev["values"]) == len(ev["steps"]), (code, ev)  # one value per step, for markers
        assert all(isinstance(s, int) for s in ev["steps"])


def test_nonfinite_values_are_null_with_their_kind(tmp_path):
    (f,) = [f for f in findings.find_all(run_of(tmp_path, nonfinite=True)) if f.code == "nonfinite"]
    ev = json.loads(json.dumps(f.to_dict()["evidence"], allow_nan=False))  # strict JSON, as the report
    kinds = ev["loss_kinds"]
    assert len(kinds) == len(ev["values"]) and {"nan"} <= set(kinds) <= {"nan", "+inf", "-inf", "finite", "absent"}
    assert all(v is None for v, k in zip(ev["values"], kinds) if k != "finite")
