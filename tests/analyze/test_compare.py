"""analyze.compare: side-by-side criteria and metrics, deltas against the first run."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from analyze.compare import build_comparison, key_metrics, render
from analyze.loader import load_run
from analyze.report import build_report, md_escape

from .conftest import synthetic_log


@pytest.fixture
def trio(tmp_path):
    good = build_report(load_run(synthetic_log(tmp_path / "good" / "run.jsonl")))
    bad = build_report(load_run(synthetic_log(tmp_path / "bad" / "run.jsonl", grad_explosion=True)))
    dense = build_report(load_run(synthetic_log(tmp_path / "dense" / "run.jsonl", router="dense")))
    return good, bad, dense


def test_deltas_are_against_the_first_run(trio):
    good, bad, dense = trio
    cmp = build_comparison([good, bad, dense])
    assert cmp.verdict == "fail"
    grad = next(r for r in cmp.criteria if r.name == "grad_norm" and r.phase == "instruct")
    assert [c.status for c in grad.cells] == ["pass", "fail", "pass"]
    d = grad.deltas()
    assert d[0] == 0 and d[1] == pytest.approx(grad.cells[1].number - grad.cells[0].number) and d[1] > 0
    heads = next(r for r in cmp.metrics if r.name == "heads_mean")
    assert heads.cells[2].number == pytest.approx(8.0)  # dense uses every head
    # a dense run's n/a routing criteria show in the per-phase rows, not as extra rows
    assert [c.status for c in next(r for r in cmp.criteria if r.name == "average_heads").cells][2] == "n/a"
    assert sum(r.name == "average_heads" for r in cmp.criteria) == 2


def test_findings_counted_per_run(trio):
    good, bad, _ = trio
    cmp = build_comparison([good, bad])
    counts = {code: n for code, _, n in cmp.findings}
    assert counts["grad_explosion"][0] == 0 and counts["grad_explosion"][1] >= 1


def test_formats(trio):
    cmp = build_comparison(list(trio))
    doc = json.loads(render(cmp, "json"))
    assert doc["verdict"] == "fail" and [r["name"] for r in doc["runs"]] == ["good", "bad", "dense"]
    assert all(len(r["cells"]) == 3 and {"status", "value", "value_text", "delta"} == set(r["cells"][0])
               for r in doc["criteria"] + doc["metrics"])
    md = render(cmp, "md")
    assert "| Criterion | Target | good | bad | dense |" in md
    buf = io.StringIO()
    Console(file=buf, width=220, color_system=None).print(render(cmp, "table"))
    assert "Key final metrics" in buf.getvalue() and "FAIL" in buf.getvalue()


def test_key_metrics_of_a_healthy_run(trio):
    m = key_metrics(trio[0].run)
    assert 3 <= m["heads_mean"] <= 4 and m["final_loss"] < 0.4 and m["exact_match"] >= 0.9


def test_needs_two_runs(trio):
    with pytest.raises(ValueError):
        build_comparison([trio[0]])


def test_header_names_each_runs_criteria_set(trio):
    """Runs of different routers are judged by different criteria sets; the header says which,
    so the dense run's n/a threshold cells read as "does not apply" (table, Markdown, JSON)."""
    cmp = build_comparison(list(trio))
    adaptive = ("good: Criteria: adaptive criteria (run_start.model.router = adaptive; default criteria); "
                "adjusted for this router: statistics_logged")
    dense = ("dense: Criteria: dense criteria (run_start.model.router = dense; default criteria); adjusted for "
             "this router: statistics_logged; n/a here: threshold_range, complexity_range, average_heads, learning")
    buf = io.StringIO()
    Console(file=buf, width=400, color_system=None).print(render(cmp, "table"))
    lines = [" ".join(x.split()) for x in buf.getvalue().splitlines()]
    assert lines[1] == adaptive and lines[3] == dense  # right under the title, one line per run
    assert "n/a here" not in lines[1]
    md = render(cmp, "md")
    assert f"- {md_escape(adaptive)}" in md and f"- {md_escape(dense)}" in md
    doc = json.loads(render(cmp, "json"))
    sets = [r["criteria_set"] for r in doc["runs"]]
    assert [s["router"] for s in sets] == ["adaptive", "adaptive", "dense"]
    assert sets[0]["not_applicable"] == [] and "threshold_range" in sets[2]["not_applicable"]
    assert "threshold_range" in sets[0]["applied"] and "threshold_range" not in sets[2]["applied"]
