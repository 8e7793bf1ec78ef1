"""The pieces of `moh watch` and of the training alerts, without a terminal: following a growing
file, the live state, the step plan, sparklines, the early rules as a monitor."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from analyze import criteria as crit
from analyze import loader, report
from analyze.live.early import EarlyAlerts, early_findings
from analyze.live.follow import Follower
from analyze.live.state import LiveRun
from analyze.live.view import duration, render, sparkline
from moh import plan

SAMPLES = Path(__file__).resolve().parents[2] / "sample_logs"


def _lines(name: str) -> list[bytes]:
    return (SAMPLES / name).read_bytes().splitlines(keepends=True)


# ---- following a file --------------------------------------------------------------------------

def test_follower_hands_back_complete_lines_once_and_waits_for_a_partial_one(tmp_path):
    log = tmp_path / "run.jsonl"
    f = Follower(tmp_path)  # a run directory: its run.jsonl, not there yet
    assert f.poll() == []
    log.write_bytes(b'{"a":1}\n{"b":')
    assert f.poll() == [b'{"a":1}']
    assert f.offset == len(b'{"a":1}\n')  # the partial line is not consumed
    assert f.poll() == []
    with open(log, "ab") as fh:
        fh.write(b'2}\n\n{"c":3}\n')
    assert f.poll() == [b'{"b":2}', b'{"c":3}']
    assert f.offset == log.stat().st_size
    assert f.poll() == []


def test_follower_reads_only_the_new_bytes(tmp_path, monkeypatch):
    log = tmp_path / "run.jsonl"
    log.write_bytes(b"x" * 5000 + b"\n")
    f = Follower(log)
    assert len(f.poll()) == 1
    with open(log, "ab") as fh:
        fh.write(b'{"n":2}\n')
    reads = []
    real_open = open

    class Counting:
        def __init__(self, fh):
            self.fh = fh

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.fh.close()

        def read(self, n=-1):
            data = self.fh.read(n)
            reads.append(len(data))
            return data

    monkeypatch.setattr("builtins.open", lambda *a, **k: Counting(real_open(*a, **k)))
    assert f.poll() == [b'{"n":2}']
    assert reads == [8]  # the new line, not the 5001 bytes before it


def test_follower_starts_over_when_the_file_is_replaced(tmp_path):
    log = tmp_path / "run.jsonl"
    log.write_bytes(b'{"old":1}\n{"old":2}\n')
    f = Follower(log)
    assert len(f.poll()) == 2
    log.write_bytes(b'{"new":1}\n')  # shorter: --overwrite started a new run
    assert f.poll() == [b'{"new":1}']
    assert f.restarts == 1


# ---- the step plan -----------------------------------------------------------------------------

def test_batches_per_epoch_known_answers():
    assert plan.batches_per_epoch(0, 32) == 0
    assert plan.batches_per_epoch(5, 32) == 1     # fewer than a batch: one smaller batch
    assert plan.batches_per_epoch(64, 32) == 2
    assert plan.batches_per_epoch(95, 32) == 2    # the remainder is spread, not a third batch
    assert plan.batches_per_epoch(96, 32) == 3


def test_planned_steps_match_the_sample_run():
    start = json.loads(_lines("healthy_adaptive.jsonl")[0])
    p = plan.planned_steps(start)
    # 593 sentences / 32 = 18 batches x 30 epochs; 64 pairs / 8 = 8 batches x 30 epochs
    assert p == {"pretrain": {"epochs": 30, "steps_per_epoch": 18, "steps": 540},
                 "instruct": {"epochs": 30, "steps_per_epoch": 8, "steps": 240}}
    end = json.loads(_lines("healthy_adaptive.jsonl")[-1])
    assert end["steps"] == 540 + 240
    assert plan.planned_steps({"config": {}, "data": {}}) is None


# ---- live state --------------------------------------------------------------------------------

def _replay(tmp_path, name, upto: int) -> tuple[Path, LiveRun]:
    log = tmp_path / "run.jsonl"
    log.write_bytes(b"".join(_lines(name)[:upto]))
    return log, LiveRun(tmp_path, crit.load_criteria(None), min_eval_s=0.0)


@pytest.mark.parametrize("name", ["healthy_adaptive.jsonl", "broken_no_gradient.jsonl", "dense_baseline.jsonl"])
def test_live_verdict_at_run_end_is_the_reports(tmp_path, name):
    lines = _lines(name)
    log, live = _replay(tmp_path, name, 100)
    live.update()
    live.evaluate(force=True)
    assert not live.finished and live.report is None and live.exit_code == 0
    with open(log, "ab") as fh:
        fh.writelines(lines[100:])
    live.update()
    assert live.finished
    live.evaluate()
    rep = report.build_report(loader.load_run(SAMPLES / name), crit.load_criteria(None))
    assert live.report.verdict == rep.verdict
    assert live.exit_code == (0 if rep.verdict == "pass" else 1)
    assert live.exit_code == (1 if name.startswith("broken") else 0)


def test_early_findings_show_before_the_end(tmp_path):
    log, live = _replay(tmp_path, "broken_no_gradient.jsonl", 60)
    live.update()
    assert live.evaluate()
    codes = {(f.code, f.severity) for f in live.findings}
    assert ("router_grad_zero", "error") in codes
    assert live.report is None
    (tmp_path / "h").mkdir()
    _, healthy = _replay(tmp_path / "h", "healthy_adaptive.jsonl", 60)
    healthy.update()
    healthy.evaluate()
    assert [f for f in healthy.findings if f.severity == "error"] == []


def test_live_progress_and_eta(tmp_path):
    log, live = _replay(tmp_path, "healthy_adaptive.jsonl", 11)  # run_start + 10 steps
    live.update()
    assert live.n_steps == 10 and live.step["step"] == 20
    assert live.total_steps() == 780
    el = live.step["elapsed"]
    assert live.eta_s() == pytest.approx((780 - 20) * el / 20)
    assert list(live.series["loss"])[-1] == pytest.approx(live.step["loss"])


def test_interrupted_run_is_followed_into_its_resume(tmp_path):
    lines = _lines("healthy_adaptive.jsonl")
    log = tmp_path / "run.jsonl"
    end = {"event": "run_end", "time": 1.0, "status": "interrupted", "steps": 20, "wall_s": 1.0}
    log.write_bytes(b"".join(lines[:11]) + json.dumps(end).encode() + b"\n")
    live = LiveRun(log, min_eval_s=0.0)
    live.update()
    assert live.end is not None and not live.finished  # an interrupted run may be resumed
    resume = {"event": "resume", "time": 2.0, "step": 20, "run_id": "x", "checkpoint": "c", "phase": "pretrain",
              "epoch": 1, "batch": 2}
    with open(log, "ab") as fh:
        fh.write(json.dumps(resume).encode() + b"\n")
        fh.writelines(lines[11:])
    live.update()
    assert live.resumes == 1 and live.finished and live.step["step"] == 780
    live.evaluate()
    assert live.report.verdict == "pass"


def test_sparkline_and_duration_known_answers():
    assert sparkline([0.0, 1.0, None, 0.5]) == "▁█ ▅"
    assert sparkline([2.0, 2.0]) == "▁▁"
    assert sparkline([]) == ""
    assert duration(None) == "-" and duration(59.6) == "1:00" and duration(3725) == "1:02:05"


def test_view_escapes_strings_from_the_log(tmp_path):
    from rich.console import Console

    recs = [json.loads(l) for l in _lines("healthy_adaptive.jsonl")[:12]]
    recs.append({"event": "alert", "step": 20, "level": "warning", "code": "x",
                 "message": "[bold]not markup[/bold] \x1b[31m"})
    log = tmp_path / "run.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    live = LiveRun(log)
    live.update()
    con = Console(record=True, width=200)
    con.print(render([live]))
    text = con.export_text()
    assert "[bold]not markup[/bold] \\x1b[31m" in text
    assert "step 22/780" in text and "epoch 2/30" in text


# ---- early rules as a training monitor ------------------------------------------------------

def _records(name: str) -> list[dict]:
    return [json.loads(l) for l in _lines(name)]


def test_early_alerts_fire_once_every_n_steps():
    mon = EarlyAlerts(every=10, max_share=1.0)
    fired = []
    for rec in _records("broken_no_gradient.jsonl"):
        mon.write(rec)
        if rec["event"] == "step":
            got = mon.check(rec["step"])
            if mon.n_steps < 10:
                assert got == []  # not evaluated before 10 logged steps
            fired += [(mon.n_steps, level, code) for level, code, _ in got]
    codes = [(level, code) for _, level, code in fired]
    assert ("error", "router_grad_zero") in codes
    assert codes.count(("error", "router_grad_zero")) == 1  # once, not on every check
    assert fired[0][0] == 10  # as soon as the first check ran


def test_early_alerts_silent_on_a_healthy_run():
    mon = EarlyAlerts(every=5, max_share=1.0)
    for rec in _records("healthy_adaptive.jsonl"):
        mon.write(rec)
        if rec["event"] == "step":
            assert mon.check(rec["step"]) == []


def test_early_alerts_do_not_repeat_the_engines_alert_or_what_a_resumed_log_showed(tmp_path):
    mon = EarlyAlerts(every=1, max_share=1.0)
    mon.write({"event": "alert", "step": 3, "level": "error", "code": "router_grad_zero", "message": "x"})
    recs = _records("broken_no_gradient.jsonl")
    for rec in recs[:30]:
        mon.write(rec)
    assert "router_grad_zero" not in [c for _, c, _ in mon.check(0)]  # the engine said it already
    log = tmp_path / "run.jsonl"
    log.write_bytes(b"".join(_lines("broken_no_gradient.jsonl")[:30]))
    again = EarlyAlerts(every=1, earlier=log, max_share=1.0)
    for rec in recs[30:40]:
        again.write(rec)
    assert again.check(0) == []
    fresh = EarlyAlerts(every=1, max_share=1.0)
    for rec in recs[:40]:
        if rec["event"] != "alert":  # the sample's own engine alerts left out: a log without them
            fresh.write(rec)
    assert "router_grad_zero" in [c for _, c, _ in fresh.check(0)]


def test_early_alerts_keep_their_share_of_the_time():
    mon = EarlyAlerts(every=1, max_share=0.05)
    recs = _records("broken_no_gradient.jsonl")
    for rec in recs[:30]:
        mon.write(rec)
    assert [c for _, c, _ in mon.check(0)]  # the first check always runs
    cost_wait = mon._next_at - __import__("time").monotonic()
    assert cost_wait > 0  # 19x the check's own cost must pass before the next
    for rec in recs[30:32]:
        mon.write(rec)
    checked = mon._checked_at
    mon.check(0)
    assert mon._checked_at == checked  # skipped: too soon
    mon._next_at = 0.0
    mon.check(0)
    assert mon._checked_at == mon.n_steps


def test_early_rule_set():
    run = loader.load_run(SAMPLES / "broken_unstable_lr.jsonl")
    codes = {f.code for f in early_findings(run)}
    full = {f.code for f in report.build_report(run, crit.load_criteria(None)).findings}
    assert codes <= {"router_grad_zero", "nonfinite", "grad_explosion", "head_collapse", "constant_stat"}
    assert codes == full & {"router_grad_zero", "nonfinite", "grad_explosion", "head_collapse", "constant_stat"}
    assert codes  # the unstable sample has an early sign


def test_live_modules_never_import_torch():
    import subprocess
    import sys

    code = ("import sys, analyze.live.watch, analyze.live.early, analyze.live.view, analyze.runpath, moh.plan; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr

