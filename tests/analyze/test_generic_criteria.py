"""The generic criteria (analyze/generic_criteria.toml) on real moh.monitor logs with crafted
routing, gradients and losses: each bound from both sides, the choice of criteria set by
run_start.producer, and a user criteria file merged over the generic set.

Logs are written by the real Recorder: top-1 (or top-2) selections over a fixed number of
tokens give exact loads; gradients are set on a two-parameter model before `step()`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from analyze.criteria import (DEFAULT_CRITERIA_PATH, GENERIC_CRITERIA_PATH, criteria_for, criteria_set,
                              default_path, evaluate)
from analyze.load import load_run
from moh import schema
from moh.monitor import Recorder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.router = nn.Linear(2, 1, bias=False)
        self.body = nn.Linear(2, 1, bias=False)


def _top1(counts) -> torch.Tensor:
    """(sum(counts), H) bool: counts[i] tokens routed to unit i alone."""
    idx = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return torch.nn.functional.one_hot(idx, len(counts)).bool()


def _write(path, *, steps=40, sel=None, early=None, router=1.0, body=lambda s: 1.0, loss=lambda s: 3.0 - s / 40,
           producer=schema.PRODUCER_MONITOR, kind=None, model=True, top_k=1):
    """A recorder log: `sel` (tokens, H) every step, `early` for the first 10 steps (default
    `sel`); router / body gradient norms; loss per step."""
    sel = _top1([50, 50, 50, 50]) if sel is None else sel
    m = Two()
    with Recorder(path, model=m if model else None, unit="expert", top_k=top_k, kind=kind,
                  producer=producer) as rec:
        for s in range(1, steps + 1):
            rec.routing(0, selected=early if (early is not None and s <= 10) else sel)
            m.router.weight.grad = torch.tensor([[router, 0.0]])
            m.body.weight.grad = torch.tensor([[body(s), 0.0]])
            rec.step(s, loss=loss(s))
    return load_run(os.path.join(path, "run.jsonl"))


def _status(run, name):
    rs = [r for r in evaluate(run, criteria_for(run)) if r.name == name]
    assert rs, name
    return sorted({r.status for r in rs}), rs[0].value


def _healthy(path, **kw):
    """Routing that changes: the first 10 steps use the units permuted."""
    sel = kw.setdefault("sel", _top1([50, 50, 50, 50]))
    kw.setdefault("early", sel.roll(1, -1) if sel.float().mean(0).std() > 0 else _top1([56, 44, 50, 50]))
    return _write(path, **kw)


def test_a_healthy_recorded_run_passes_every_generic_criterion(tmp_path):
    run = _healthy(tmp_path)
    assert run.generic and default_path(run) == GENERIC_CRITERIA_PATH
    res = evaluate(run, criteria_for(run))
    assert {r.name for r in res} == {"statistics_logged", "router_gradient", "routing_changes", "load_cv",
                                     "max_violation", "dead_units", "no_collapse", "grad_norm", "loss_decreasing"}
    assert [(r.name, r.status, r.detail) for r in res if r.status != "pass"] == []
    cs = criteria_set(run)
    assert "generic criteria: run_start.producer = moh.monitor" in cs["reason"]


def test_engine_logs_keep_the_engine_criteria(tmp_path):
    run = _healthy(tmp_path / "a", producer=schema.PRODUCER_TRAIN)
    assert not run.generic and default_path(run) == DEFAULT_CRITERIA_PATH
    assert {"loss", "average_heads", "output_quality"} <= {c.name for c in criteria_for(run)}
    # a log written before run_start had a producer (moh train or an import): the engine's set
    path = tmp_path / "b" / "run.jsonl"
    _healthy(tmp_path / "b")
    lines = path.read_text().splitlines()
    start = json.loads(lines[0])
    del start["producer"]
    path.write_text("\n".join([json.dumps(start)] + lines[1:]) + "\n")
    assert not load_run(path).generic


@pytest.mark.parametrize("grad, status", [(0.0, "fail"), (0.5e-5, "fail"), (2e-5, "pass"), (0.06, "pass")])
def test_router_gradient_bound_is_1e_5(tmp_path, grad, status):
    assert _status(_healthy(tmp_path, router=grad), "router_gradient")[0] == [status]


def test_statistics_logged_needs_the_router_gradient_and_an_adaptive_run_its_threshold(tmp_path):
    assert _status(_healthy(tmp_path / "ok"), "statistics_logged")[0] == ["pass"]
    assert _status(_healthy(tmp_path / "zero", router=0.0), "statistics_logged")[0] == ["fail"]
    assert _status(_healthy(tmp_path / "nomodel", model=False), "statistics_logged")[0] == ["fail"]
    adaptive = _healthy(tmp_path / "adaptive", kind="adaptive")  # no threshold / complexity given
    (r,) = [r for r in evaluate(adaptive, criteria_for(adaptive)) if r.name == "statistics_logged"]
    assert r.status == "fail" and "absent: threshold_mean" in r.detail


@pytest.mark.parametrize("early, status, change", [
    ([50, 50, 50, 50], "fail", 0.0), ([51, 49, 50, 50], "fail", 0.005),  # 1 token in 200: below 0.01
    ([53, 47, 50, 50], "pass", 0.015)])
def test_routing_changes_needs_a_load_change_above_0_01(tmp_path, early, status, change):
    got, value = _status(_write(tmp_path, early=_top1(early)), "routing_changes")
    assert got == [status] and value["head_load"] == pytest.approx(change, abs=1e-6)


def _cv(counts):
    p = np.array(counts) / sum(counts)
    return p.std() / p.mean()


@pytest.mark.parametrize("counts, status", [([130, 30, 20, 20], "pass"), ([140, 20, 20, 20], "fail")])
def test_load_cv_bound_is_1(tmp_path, counts, status):
    got, value = _status(_healthy(tmp_path, sel=_top1(counts)), "load_cv")
    assert value == pytest.approx(_cv(counts), rel=1e-5) and got == [status]
    assert (value < 1.0) == (status == "pass")


@pytest.mark.parametrize("top, status", [(238, "pass"), (252, "fail")])  # shares 0.425 / 0.45 of 8 units
def test_max_violation_bound_is_2_5(tmp_path, top, status):
    counts = [top] + [(560 - top) // 7] * 7
    got, value = _status(_healthy(tmp_path, sel=_top1(counts)), "max_violation")
    assert value == pytest.approx(8 * top / 560 - 1, rel=1e-5) and got == [status]  # 2.4 / 2.6


@pytest.mark.parametrize("least, status", [(6, "pass"), (4, "fail")])  # share 0.03 / 0.02; dead below 1/40
def test_dead_units_none_allowed(tmp_path, least, status):
    rest = 200 - least
    counts = [rest - 2 * (rest // 3), rest // 3, rest // 3, least]
    got, value = _status(_healthy(tmp_path, sel=_top1(counts)), "dead_units")
    assert got == [status] and value == (0.0 if status == "pass" else 0.25)


def _pairs(n01: int, total: int = 200) -> torch.Tensor:
    """Top-2 of 4: n01 tokens use units (0, 1), the rest (2, 3)."""
    sel = torch.zeros(total, 4, dtype=torch.bool)
    sel[:n01, :2] = True
    sel[n01:, 2:] = True
    return sel


def _spread(f):
    s = np.array([f, f, 1 - f, 1 - f]) / 2
    s = s[s > 0]
    return (math.exp(-(s * np.log(s)).sum()) - 2) / 2


@pytest.mark.parametrize("n01, status", [(190, "pass"), (192, "fail"), (200, "fail")])
def test_no_collapse_bound_is_load_spread_0_2(tmp_path, n01, status):
    got, value = _status(_healthy(tmp_path, sel=_pairs(n01), early=_pairs(100), top_k=2), "no_collapse")
    assert value == pytest.approx(_spread(n01 / 200), abs=1e-5) and got == [status]  # 0.2195 / 0.1829 / 0
    assert _status(_healthy(tmp_path / "even", sel=_pairs(100), early=_pairs(90), top_k=2), "no_collapse") == (["pass"], 1.0)


@pytest.mark.parametrize("spike, status", [(9.5, "pass"), (10.5, "fail"), (float("nan"), "fail"), (float("inf"), "fail")])
def test_grad_norm_spike_ratio_bound_is_10_and_non_finite_fails(tmp_path, spike, status):
    run = _healthy(tmp_path, router=1e-3, body=lambda s: spike if s == 30 else 1.0)
    got, value = _status(run, "grad_norm")
    assert got == [status]
    if math.isfinite(spike):
        assert value == pytest.approx(spike, rel=1e-5)


@pytest.mark.parametrize("ratio, status", [(0.94, "pass"), (0.96, "fail"), (1.2, "fail")])
def test_loss_decreasing_bound_is_0_95(tmp_path, ratio, status):
    # 40 logged steps: the first and last quarter (10 steps each) are compared
    got, value = _status(_healthy(tmp_path, loss=lambda s: 2.0 if s <= 30 else 2.0 * ratio), "loss_decreasing")
    assert value == pytest.approx(ratio, rel=1e-6) and got == [status]


def test_a_user_criteria_file_merges_over_the_generic_set(tmp_path):
    _healthy(tmp_path / "run")
    crit = tmp_path / "mine.toml"
    crit.write_text("[criteria.loss_decreasing]\ntarget = { max = 0.5 }\n\n[criteria.dead_units]\nenabled = false\n")
    cmd = [sys.executable, "-c", "import sys, cli; sys.exit(cli.main())", "report", str(tmp_path / "run" / "run.jsonl"),
           "--format", "json"]
    env = {**os.environ, "PYTHONPATH": ROOT}
    base = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    mine = subprocess.run(cmd + ["--criteria", str(crit)], capture_output=True, text=True, cwd=ROOT, env=env)
    assert base.returncode == 0, base.stderr
    assert mine.returncode == 1, mine.stderr
    doc = json.loads(mine.stdout)
    names = {r["name"]: r["status"] for r in doc["criteria"]}
    # the healthy loss falls to 0.74 of its start: a user bound of 0.5 fails it
    assert names["loss_decreasing"] == "fail" and "dead_units" not in names and "loss" not in names
    assert json.loads(base.stdout)["verdict"] == "pass"


def test_the_generic_file_is_a_valid_criteria_file():
    from analyze.criteria_spec import load_criteria

    names = [c.name for c in load_criteria(None, GENERIC_CRITERIA_PATH)]
    assert "loss" not in names and "average_heads" not in names and len(names) == 9


@pytest.mark.parametrize("producer, fires", [(schema.PRODUCER_MONITOR, False), (schema.PRODUCER_TRAIN, True)])
def test_the_engines_loss_bar_does_not_judge_a_recorded_model(tmp_path, producer, fires):
    from analyze.findings import find_all

    # flat at 3.0, 7.5x the engine's 0.40 bar: a stalled engine run, but maybe the floor of a
    # model of someone else's (loss_decreasing judges that one)
    run = _healthy(tmp_path, loss=lambda s: 3.0, producer=producer)
    assert ("loss_plateau" in {f.code for f in find_all(run)}) == fires
