"""Routing metrics in the report: load CV, max violation, dead-head fraction, loss alignment."""

from __future__ import annotations

import json
import math

import pytest

from tests import synthetic
from analyze.loader import load_run
from analyze.metrics import routing_metrics
from analyze.report import build_report, render_json, render_md
from moh import schema

EVEN = [0.5] * 8
LATE = {0: [0.2] * 4 + [0.6] * 4,      # mean 0.4, std 0.2: CV 0.5; busiest 0.6: violation 0.5
        1: [0.0] + [0.4] * 7}          # mean 0.35, one head with no load: dead 1/8, violation 1/7


def _run(tmp_path, router="adaptive", corr=True):
    records = synthetic.generate(n_steps=200, n_layers=2, seed=1, router=router)
    steps = [r for r in records if r["event"] == schema.STEP]
    for k, r in enumerate(steps):
        late = k >= 160  # the final fifth of 200 logged steps
        for lay in r["layers"]:
            if router != "dense":
                lay["head_load"] = list(LATE[lay["layer"]] if late else EVEN)
            if corr:
                lay["complexity_loss_corr"] = (0.25 if late else 0.9) if router == "adaptive" else None
                lay["heads_loss_corr"] = (-0.1 if late else 0.9) if router == "adaptive" else None
    return load_run(synthetic.write_jsonl(records, tmp_path / router / "run.jsonl"))


def test_known_answers_over_the_final_window(tmp_path):
    m = routing_metrics(_run(tmp_path))
    l0, l1 = m["layers"]
    assert (l0["load_cv"], l0["max_violation"], l0["dead_head_fraction"]) == pytest.approx((0.5, 0.5, 0.0))
    assert l1["load_cv"] == pytest.approx(math.sqrt(1 / 7))  # std sqrt(0.0175) / mean 0.35
    assert l1["max_violation"] == pytest.approx(1 / 7)
    assert l1["dead_head_fraction"] == pytest.approx(1 / 8)
    assert l0["complexity_loss_corr"] == pytest.approx(0.25) and l0["heads_loss_corr"] == pytest.approx(-0.1)
    assert m["window"] == "final 20% of the logged steps"


def test_moh_counts_routed_heads_only(tmp_path):
    records = synthetic.generate(n_steps=50, n_layers=1, seed=1, router="moh")
    for r in records:
        if r["event"] == schema.STEP:
            r["layers"][0]["head_load"] = [1.0, 1.0, 0.25, 0.75, 0.5, 0.5, 0.5, 0.5]  # 2 shared heads
    (row,) = routing_metrics(load_run(synthetic.write_jsonl(records, tmp_path / "run.jsonl")))["layers"]
    # routed loads 0.25, 0.75, 0.5 x 4: mean 0.5, violation 0.5, std sqrt(0.125 / 6)
    assert row["max_violation"] == pytest.approx(0.5)
    assert row["load_cv"] == pytest.approx(math.sqrt(0.125 / 6) / 0.5)
    assert row["complexity_loss_corr"] is None


def test_not_applicable_is_none_and_shown_as_na(tmp_path):
    dense = routing_metrics(_run(tmp_path, router="dense", corr=False))
    assert dense["note"].startswith("dense")
    assert all(row[k] is None for row in dense["layers"] for k in ("load_cv", "max_violation", "dead_head_fraction"))
    old = build_report(_run(tmp_path, corr=False))  # a log written before the correlation fields
    assert all(row["complexity_loss_corr"] is None for row in old.metrics["layers"])
    md = render_md(old)
    assert "## Routing metrics" in md and "| 0 | 0.5 | 0.5 | 0% | n/a | n/a |" in md


def test_report_json_carries_the_metrics(tmp_path):
    doc = json.loads(render_json(build_report(_run(tmp_path))))
    assert [row["layer"] for row in doc["metrics"]["layers"]] == [0, 1]
    assert doc["metrics"]["layers"][1]["dead_head_fraction"] == pytest.approx(0.125)
