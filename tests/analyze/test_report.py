"""analyze.report: verdict, the three renderers, escaping of strings taken from logs."""

from __future__ import annotations

import io
import json
import math
import re

from rich.console import Console

from analyze.loader import load_run
from analyze.report import build_report, md_escape, render

from .conftest import make_records, synthetic_log, write_log


def _table_text(rep) -> str:
    buf = io.StringIO()
    Console(file=buf, width=200, color_system=None).print(render(rep, "table"))
    return buf.getvalue()


def test_healthy_report_passes_in_every_format(good_log):
    rep = build_report(load_run(good_log))
    assert rep.verdict == "pass" and rep.findings == []
    text = _table_text(rep)
    assert "Expected vs actual" in text and "Average heads (pretrain)" in text and "PASS" in text
    md = render(rep, "md")
    assert md.startswith("# moh report: good") and "| Criterion | Layer | Target | Actual | Status | Notes |" in md
    doc = json.loads(render(rep, "json"))
    assert doc["verdict"] == "pass"
    assert {"name", "status", "value", "target", "layer"} <= set(doc["criteria"][0])
    assert doc["findings"] == []


def test_broken_run_fails_with_findings_in_json(tmp_path):
    rep = build_report(load_run(synthetic_log(tmp_path / "run.jsonl", router_grad_zero=True)))
    assert rep.verdict == "fail"  # an error finding fails the verdict even when criteria pass
    doc = json.loads(render(rep, "json"))
    codes = {f["code"] for f in doc["findings"]}
    assert "router_grad_zero" in codes
    f = doc["findings"][0]
    assert {"code", "severity", "layer", "message", "evidence"} <= set(f)
    assert "router_grad_zero" in _table_text(rep)


def test_json_has_null_for_nonfinite_values(tmp_path):
    recs = make_records(n_steps=30, phases=("pretrain",))
    for r in recs:
        if r["event"] == "step" and r["step"] >= 25:
            r["loss"] = r["lm_loss"] = math.nan
            r["grad_norm"] = math.inf
    rep = build_report(load_run(write_log(tmp_path / "run.jsonl", recs)))
    text = render(rep, "json")
    doc = json.loads(text)  # strict JSON: no NaN / Infinity tokens
    assert "NaN" not in text and "Infinity" not in text
    grad = next(c for c in doc["criteria"] if c["name"] == "grad_norm")
    assert grad["status"] == "fail" and grad["value"] is None
    assert doc["verdict"] == "fail"


def test_strings_from_logs_are_escaped(tmp_path):
    recs = make_records(n_steps=12, phases=("pre|train", "[bold]inst*ruct[/bold] <script>"))
    path = write_log(tmp_path / "x_[red]y*" / "run.jsonl", recs)
    rep = build_report(load_run(path))
    md = render(rep, "md")
    assert "<script>" not in md and "&lt;script&gt;" in md
    assert "pre\\|train" in md and "inst\\*ruct" in md
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and "Criterion" not in ln and "Severity" not in ln]
    assert rows and all(len(re.findall(r"(?<!\\)\|", ln)) == 7 for ln in rows)  # no cell split by a stray pipe
    assert md.startswith("# moh report: x\\_\\[red\\]y\\*")
    text = _table_text(rep)
    assert "[bold]inst*ruct[/bold]" in text  # shown literally, not interpreted as rich markup
    assert "x_[red]y*" in text


def test_md_escape():
    assert md_escape("a|b*c_d`e[f]g<h>&\nnext") == "a\\|b\\*c\\_d\\`e\\[f\\]g&lt;h&gt;&amp; next"


def test_dense_report_is_honest(dense_log):
    rep = build_report(load_run(dense_log))
    assert rep.verdict == "pass"
    text = _table_text(rep)
    assert "n/a" in text and "dense baseline" in text
    doc = json.loads(render(rep, "json"))
    assert any(c["applicable"] is False and c["status"] == "missing" for c in doc["criteria"])


def test_header_names_the_criteria_set_and_why(tmp_path):
    rep = build_report(load_run(synthetic_log(tmp_path / "run.jsonl", router="moh")))
    line = ("Criteria: moh criteria (run_start.model.router = moh; default criteria); adjusted for this "
            "router: statistics_logged, learning; n/a here: threshold_range, complexity_range, average_heads")
    assert " ".join(_table_text(rep).split()).count(line) == 1
    assert md_escape(line) in render(rep, "md")
    doc = json.loads(render(rep, "json"))
    assert doc["criteria_set"]["router"] == "moh" and doc["criteria_set"]["file"] == "default"
