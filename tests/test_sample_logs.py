"""The sample logs in sample_logs/ are real `moh train` runs: the report must tell them apart.

A healthy adaptive run and a dense baseline pass, both with no warning or error finding (the
adaptive one warned `complexity_uninformative` until issue 18 made the difficulty target the
default; docs/routing.md). Each deliberately broken run fails and names its fault. Regenerate the logs with sample_logs/regenerate.sh.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app

SAMPLES = Path(__file__).resolve().parent.parent / "sample_logs"


def report(name: str) -> tuple[int, dict]:
    r = CliRunner().invoke(app, ["report", str(SAMPLES / f"{name}.jsonl"), "--format", "json"])
    assert r.exit_code in (0, 1), f"exit {r.exit_code}\n{r.stdout}\n{r.stderr}"
    return r.exit_code, json.loads(r.stdout)


def serious(doc: dict) -> set[str]:
    return {f["code"] for f in doc["findings"] if f["severity"] in ("warning", "error")}


@pytest.mark.parametrize("name, warned", [("healthy_adaptive", set()), ("dense_baseline", set())])
def test_healthy_samples_pass_without_warnings(name, warned):
    code, doc = report(name)
    failed = [c for c in doc["criteria"] if c["status"] == "fail"]
    assert code == 0 and doc["verdict"] == "pass", failed
    assert serious(doc) == warned, doc["findings"]


def test_sample_without_straight_through_is_caught_as_a_blocked_gradient():
    code, doc = report("broken_no_gradient")
    assert code == 1 and doc["verdict"] == "fail"
    assert "router_grad_zero" in serious(doc)
    assert {c["name"] for c in doc["criteria"] if c["status"] == "fail"} >= {"learning"}


def test_sample_with_unstable_lr_fails_on_loss_and_flags_the_divergence():
    # lr 0.3 from the first step, no clip: the loss leaps from 13.9 to 38.6 within four steps and
    # the routing collapses to one head. Its grad norm starts at ~15 and falls, with no calm
    # stretch for a spike to stand out from, so grad_explosion is not this sample's signature
    # (at this engine; seed 1 of the same settings does spike: bench/calibrate.py unstable_lr).
    code, doc = report("broken_unstable_lr")
    assert code == 1 and doc["verdict"] == "fail"
    assert {c["name"] for c in doc["criteria"] if c["status"] == "fail"} >= {"loss", "output_quality"}
    assert {"loss_divergence", "head_collapse", "dead_heads"} <= serious(doc)


def test_samples_are_small():
    assert sum(p.stat().st_size for p in SAMPLES.glob("*.jsonl")) < 5 * 2**20
