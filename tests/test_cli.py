"""CLI: `moh report` and `moh compare` -- exit codes, payload on stdout, messages on stderr.

Each assertion on an exit code carries the command's output as its message, so a failure says why.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from tests.analyze.conftest import make_records, synthetic_log, write_log

runner = CliRunner()


def moh(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _out(r) -> str:
    return f"exit {r.exit_code}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    d = tmp_path_factory.mktemp("logs")
    return {
        "good": synthetic_log(d / "good" / "run.jsonl"),
        "bad": synthetic_log(d / "bad" / "run.jsonl", grad_explosion=True, router_grad_zero=True),
        "dense": synthetic_log(d / "dense" / "run.jsonl", router="dense"),
        "dir": d,
    }


# ---- report -----------------------------------------------------------------------------------


def test_report_pass_is_exit_0_with_the_table_on_stdout(logs):
    r = moh("report", logs["good"])
    assert r.exit_code == 0, _out(r)
    assert "Expected vs actual" in r.stdout and "PASS" in r.stdout
    assert r.stderr == "", _out(r)


def test_report_fail_is_exit_1_with_finding_codes(logs):
    r = moh("report", logs["bad"], "--format", "json")
    assert r.exit_code == 1, _out(r)
    doc = json.loads(r.stdout)
    assert doc["verdict"] == "fail"
    assert {"grad_explosion", "router_grad_zero"} <= {f["code"] for f in doc["findings"]}


def test_report_dense_baseline_passes(logs):
    r = moh("report", logs["dense"], "--format", "md")
    assert r.exit_code == 0, _out(r)
    assert "n/a" in r.stdout and r.stdout.startswith("# moh report: dense")


@pytest.mark.parametrize("args", [
    ("--format", "xml"),
    ("--input-format", "csv"),
    ("--no-such-option",),
])
def test_report_usage_errors_are_exit_2(logs, args):
    r = moh("report", logs["good"], *args)
    assert r.exit_code == 2, _out(r)
    assert r.stdout == "", _out(r)


def test_report_bad_criteria_file_is_exit_2(logs, tmp_path):
    crit = tmp_path / "c.toml"
    crit.write_text("[criteria.loss]\nwindow = 'median'\n")
    r = moh("report", logs["good"], "--criteria", crit)
    assert r.exit_code == 2, _out(r)
    assert str(crit) in r.stderr and "window" in r.stderr and len(r.stderr.strip().splitlines()) == 1, _out(r)


def test_report_criteria_file_changes_the_verdict(logs, tmp_path):
    crit = tmp_path / "c.toml"
    crit.write_text("[criteria.loss]\ntarget = { max = 0.001 }\n")
    r = moh("report", logs["good"], "--criteria", crit, "--format", "json")
    assert r.exit_code == 1, _out(r)
    assert any(c["name"] == "loss" and c["status"] == "fail" for c in json.loads(r.stdout)["criteria"])


@pytest.mark.parametrize("content", [b"", b"\x00\xff\x13binary" * 50, b"plain text, not a log\n"])
def test_report_unusable_input_is_exit_3_one_line(tmp_path, content):
    p = tmp_path / "f.jsonl"
    p.write_bytes(content)
    r = moh("report", p)
    assert r.exit_code == 3, _out(r)
    assert r.stdout == "" and str(p) in r.stderr and len(r.stderr.strip().splitlines()) == 1, _out(r)


def test_report_missing_path_and_directory_are_exit_3(tmp_path):
    for p in (tmp_path / "nope.jsonl", tmp_path):
        r = moh("report", p)
        assert r.exit_code == 3, _out(r)
        assert "Traceback" not in r.stderr, _out(r)


def test_report_notes_go_to_stderr_and_strict_makes_them_errors(tmp_path):
    lines = [json.dumps(r) for r in make_records(n_steps=30)]
    lines.insert(5, "{not json")
    p = tmp_path / "run.jsonl"
    p.write_text("\n".join(lines) + "\n")
    r = moh("report", p, "--format", "json")
    assert r.exit_code in (0, 1), _out(r)
    json.loads(r.stdout)  # notes never pollute the payload
    assert "note:" in r.stderr and "line 6" in r.stderr, _out(r)
    r = moh("report", p, "--strict")
    assert r.exit_code == 3, _out(r)
    assert f"{p}:6:" in r.stderr, _out(r)


def test_report_log_without_steps_is_exit_3(tmp_path):
    p = write_log(tmp_path / "run.jsonl", make_records(n_steps=3)[:1])
    r = moh("report", p)
    assert r.exit_code == 3, _out(r)
    assert "no step records" in r.stderr, _out(r)


def test_report_in_a_real_subprocess_never_shows_a_traceback(logs, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"event": "run_start", "schema_version": "one"}\n')
    cmd = [sys.executable, "-c", "from cli import main; main()", "report"]
    root = Path(__file__).resolve().parents[1]
    ok = subprocess.run(cmd + [str(logs["good"]), "--format", "json"], capture_output=True, text=True, cwd=root)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["verdict"] == "pass"
    broken = subprocess.run(cmd + [str(bad)], capture_output=True, text=True, cwd=root)
    assert broken.returncode == 3, broken.stderr
    assert "Traceback" not in broken.stderr and "schema_version" in broken.stderr


# ---- compare ----------------------------------------------------------------------------------


def test_compare_side_by_side(logs):
    r = moh("compare", logs["good"], logs["bad"], logs["dense"], "--format", "json")
    assert r.exit_code == 1, _out(r)
    doc = json.loads(r.stdout)
    assert [x["verdict"] for x in doc["runs"]] == ["pass", "fail", "pass"]
    r = moh("compare", logs["good"], logs["dense"])
    assert r.exit_code == 0, _out(r)
    assert "Key final metrics" in r.stdout


def test_compare_usage_and_input_errors(logs, tmp_path):
    r = moh("compare", logs["good"])
    assert r.exit_code == 2, _out(r)
    r = moh("compare", logs["good"], tmp_path / "missing.jsonl")
    assert r.exit_code == 3, _out(r)
    assert "missing.jsonl" in r.stderr and r.stdout == "", _out(r)
