"""`moh train` while it runs: alerts from the early rules, --stop-on, progress lines on a
non-terminal stderr, and what a run directory means to the other commands. Real training in
a subprocess (a one-layer model: seconds)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moh.progress import TrainProgress

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "n_layers=1", "--set", "d_model=32", "--set", "n_heads=4", "--set", "d_ff=64",
        "--set", "eval_prompts=4", "--set", "eval_max_new_tokens=6", "--log-every", "1", "--threads", "1"]
NO_GRADIENT = ["--set", "straight_through=false"]  # the sample fault: the router gets no gradient


def moh_cmd(*args) -> list[str]:
    return [sys.executable, "-c", "from cli import main; main()", *map(str, args)]


def moh(*args, timeout=180):
    return subprocess.run(moh_cmd(*args), capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def records(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "run.jsonl").read_text().splitlines()]


def test_stop_on_error_ends_a_run_without_router_gradient(tmp_path):
    out = tmp_path / "run"
    p = moh("train", *TINY, *NO_GRADIENT, "--epochs", "2", "--alert-every", "5", "--stop-on", "error", "--out", out)
    assert p.returncode == 1, p.stderr
    recs = records(out)
    alerts = [r for r in recs if r["event"] == "alert"]
    assert [(a["level"], a["code"], a["step"]) for a in alerts] == [("error", "router_grad_zero", 5)]
    assert recs[-1]["event"] == "run_end" and recs[-1]["status"] == "failed" and recs[-1]["steps"] == 5
    assert max(r["step"] for r in recs if r["event"] == "step") == 5  # stopped at the first check
    lines = [l for l in p.stderr.splitlines() if l.startswith("alert")]
    assert lines == ["alert (error) at step 5: router_grad_zero: " + alerts[0]["message"]]


def test_alerts_without_stop_let_the_run_finish(tmp_path):
    out = tmp_path / "run"
    p = moh("train", *TINY, *NO_GRADIENT, "--epochs", "1", "--alert-every", "5", "--out", out)
    assert p.returncode == 0, p.stderr
    recs = records(out)
    assert recs[-1]["status"] == "completed"
    alerts = [(a["level"], a["code"]) for a in recs if a["event"] == "alert"]
    assert alerts.count(("error", "router_grad_zero")) == 1  # once, though every check sees it
    assert p.stderr.count("alert (error)") == 1


def test_healthy_run_writes_no_alert_and_plain_epoch_lines_in_order(tmp_path):
    out = tmp_path / "run"
    p = moh("train", *TINY, "--epochs", "2", "--alert-every", "1", "--out", out)
    assert p.returncode == 0, p.stderr
    recs = records(out)
    assert [r for r in recs if r["event"] == "alert"] == []
    lines = p.stderr.splitlines()
    order = [l.split("  ")[0] for l in lines if (" epoch " in l or " eval:" in l) and not l.startswith(" ")]
    assert order == ["pretrain epoch 1/2", "pretrain epoch 2/2", "pretrain eval: loss {:.3f}".format(
        next(r["loss"] for r in recs if r["event"] == "eval" and r["phase"] == "pretrain")),
        "instruct epoch 1/2", "instruct epoch 2/2", "instruct eval: loss {:.3f}".format(
        next(r["loss"] for r in recs if r["event"] == "eval" and r["phase"] == "instruct"))]
    steps = [r for r in recs if r["event"] == "step"]
    total_pre = sum(1 for r in steps if r["phase"] == "pretrain")
    first = next(l for l in lines if l.startswith("pretrain epoch 2/2"))
    assert f"step {total_pre}/{total_pre}" in first
    assert "loss {:.3f}".format(next(r for r in reversed(steps) if r["phase"] == "pretrain")["loss"]) in first
    assert "\x1b" not in p.stderr  # plain text off a terminal


def test_epoch_lines_arrive_while_the_run_is_going(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(moh_cmd("train", *TINY, "--pretrain-epochs", "30", "--instruct-epochs", "1",
                                    "--alert-every", "0", "--out", out),
                            cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        first = proc.stderr.readline()
        still_running = proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    assert first.startswith("pretrain epoch 1/30  step 18/540"), first
    assert still_running  # flushed as it happened, not at the end


def test_both_epoch_counts_zero_is_a_usage_error(tmp_path):
    p = moh("train", *TINY, "--epochs", "0", "--out", tmp_path / "z")
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "config error: pretrain_epochs and instruct_epochs are both 0: there is nothing to train"]
    assert not (tmp_path / "z").exists()
    p = moh("train", *TINY, "--pretrain-epochs", "0", "--instruct-epochs", "1", "--alert-every", "0",
            "--out", tmp_path / "one")
    assert p.returncode == 0, p.stderr  # one phase is enough


@pytest.mark.parametrize("args", [["--stop-on", "fatal"], ["--stop-on", "error", "--alert-every", "0"],
                                  ["--stop-on", "error", "--nproc", "2"]])
def test_stop_on_usage_errors(tmp_path, args):
    p = moh("train", *TINY, *args, "--out", tmp_path / "x")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "--stop-on" in p.stderr


def test_progress_lines_known_values():
    buf = io.StringIO()
    prog = TrainProgress(False, stream=buf, terminal=False)
    prog("phase_start", {"phase": "pretrain", "total_steps": 4, "epochs": 2})
    for i in range(1, 5):
        rec = {"phase": "pretrain", "epoch": (i - 1) // 2, "step": i, "i": i, "total": 4, "epochs": 2}
        if i % 2 == 1:  # logged on odd steps only: the epoch line shows the last logged loss
            rec |= {"loss": 10.0 - i, "heads": 2.0 + i / 10}
        prog("step", rec)
    prog("alert", {"step": 4, "level": "warning", "code": "c", "message": "m"})
    prog("eval", {"phase": "pretrain", "loss": 1.23456, "exact_match": None})
    lines = [l.rsplit("  elapsed", 1)[0] for l in buf.getvalue().splitlines()]
    assert lines == ["pretrain epoch 1/2  step 2/4  loss 9.000  heads 2.10",
                     "pretrain epoch 2/2  step 4/4  loss 7.000  heads 2.30",
                     "alert (warning) at step 4: c: m",
                     "pretrain eval: loss 1.235  exact match n/a"]
    quiet = io.StringIO()
    q = TrainProgress(True, stream=quiet, terminal=False)
    q("step", {"phase": "pretrain", "epoch": 0, "step": 2, "i": 2, "total": 4, "epochs": 2, "loss": 1.0, "heads": 1.0})
    q("alert", {"step": 2, "level": "error", "code": "c", "message": "m"})
    assert quiet.getvalue() == "alert (error) at step 2: c: m\n"  # --quiet keeps alerts


def test_every_log_argument_takes_a_run_directory(tmp_path):
    sample = ROOT / "sample_logs" / "broken_no_gradient.jsonl"
    run = tmp_path / "demo"
    run.mkdir()
    (run / "run.jsonl").write_bytes(sample.read_bytes())
    by_dir, by_file = moh("report", run, "--format", "json"), moh("report", sample, "--format", "json")
    assert by_dir.returncode == by_file.returncode == 1
    assert json.loads(by_dir.stdout)["verdict"] == json.loads(by_file.stdout)["verdict"] == "fail"
    assert moh("compare", run, ROOT / "sample_logs" / "healthy_adaptive.jsonl").returncode == 1
    p = moh("plot", run, "-o", tmp_path / "figs")
    assert p.returncode == 0 and (tmp_path / "figs").is_dir(), p.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    p = moh("report", empty)
    assert p.returncode == 3 and p.stderr.strip() == f"error: {empty / 'run.jsonl'}: no such file", p.stderr
