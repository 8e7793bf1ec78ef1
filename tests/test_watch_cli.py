"""`moh watch --once` and its errors through the real entry point (a subprocess, no terminal)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_logs"


def watch(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-c", "from cli import main; main()", "watch", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"})


def test_once_on_finished_runs_gives_the_reports_code():
    ok = watch(SAMPLES / "healthy_adaptive.jsonl", "--once")
    assert ok.returncode == 0, ok.stderr
    assert "VERDICT PASS" in ok.stdout and "step 780/780" in ok.stdout and "ended: completed" in ok.stdout
    bad = watch(SAMPLES / "broken_unstable_lr.jsonl", "--once")
    assert bad.returncode == 1 and "VERDICT FAIL" in bad.stdout
    both = watch(SAMPLES / "healthy_adaptive.jsonl", SAMPLES / "broken_no_gradient.jsonl", "--once")
    assert both.returncode == 1  # any failing run fails the watch
    assert both.stdout.count("VERDICT") == 2


def test_once_on_a_run_still_going(tmp_path):
    run = tmp_path / "demo"
    run.mkdir()
    lines = (SAMPLES / "broken_no_gradient.jsonl").read_text().splitlines(keepends=True)
    (run / "run.jsonl").write_text("".join(lines[:80]))
    p = watch(run, "--once")
    assert p.returncode == 0, p.stderr  # nothing judged yet: not a failure
    assert "running" in p.stdout and "VERDICT" not in p.stdout
    assert "findings so far (early rules)" in p.stdout and "router_grad_zero" in p.stdout
    assert "step 152/780" in p.stdout and "epoch 9/30" in p.stdout


def test_watch_errors_are_one_line(tmp_path):
    p = watch(tmp_path / "nothing.jsonl", "--once")
    assert p.returncode == 3 and p.stderr.strip() == f"error: {tmp_path / 'nothing.jsonl'}: no such file"
    empty = tmp_path / "ended.jsonl"
    start = (SAMPLES / "healthy_adaptive.jsonl").read_text().splitlines()[0]
    end = json.dumps({"event": "run_end", "time": 1.0, "status": "failed", "steps": 0, "wall_s": 0.1})
    empty.write_text(start + "\n" + end + "\n")
    p = watch(empty, "--once")
    assert p.returncode == 3
    assert p.stderr.strip() == f"error: {empty}: the run ended with no step records, nothing to judge"
    crit = tmp_path / "c.toml"
    crit.write_text("not toml [")
    p = watch(SAMPLES / "healthy_adaptive.jsonl", "--once", "--criteria", crit)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1


def test_a_text_log_is_refused_in_one_line(tmp_path):
    text = tmp_path / "train.log"
    text.write_text("".join(f"Epoch {i}: Loss = 3.{i}\n" for i in range(8)))
    for args in ([text, "--once"], [text, "--interval", "0.1"]):
        p = watch(*args)
        assert p.returncode == 3, p.stderr
        assert p.stderr.strip().splitlines() == [
            f"error: {text}: not a JSONL telemetry log (moh watch follows run.jsonl; "
            "moh report and moh import read reference trainer text logs)"]
