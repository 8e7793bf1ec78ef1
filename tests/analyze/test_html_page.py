"""The HTML page without a browser (the fast tier; tests/test_html_report.py loads it in chromium):
escaping, where each finding goes, what the page holds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from analyze import compare, report
from analyze.loader import load_run
from analyze.render.html import compare_html, esc, report_html
from analyze.render.svg import figure_of
from analyze.rules.base import Finding

SAMPLES = Path(__file__).resolve().parents[2] / "sample_logs"


@pytest.fixture(scope="module")
def broken():
    return report.build_report(load_run(SAMPLES / "broken_no_gradient.jsonl"))


def test_esc_makes_markup_and_control_characters_text():
    assert esc("<script>alert('x')</script>") == "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"
    assert esc('" onerror="x') == "&quot; onerror=&quot;x"
    assert esc("a\x1b[31mb\u202e") == "a\\x1b[31mb\\u202e"
    assert esc(None) == ""


@pytest.mark.parametrize("code, stat, message, family", [
    ("router_grad_zero", None, "the router gradient norm is ~0", "grad_norms"),
    ("loss_divergence", None, "loss rose", "loss"),
    ("head_collapse", None, "heads pinned", "heads"),
    ("load_imbalance", None, "uneven", "head_load"),
    ("redundant_stat", "heads_mean", "heads_mean restates complexity_mean", "heads"),
    ("constant_stat", "threshold_mean", "constant", "thresholds"),
    ("constant_stat", "pred_norm", "pred_norm is constant", None),      # no figure draws pred_norm
    ("silent_zero", "complexity_mean", "complexity_mean is 0 on every step", "complexity"),
])
def test_each_finding_goes_next_to_the_figure_of_its_series(code, stat, message, family):
    evidence = {"stat": stat} if stat else {}
    assert figure_of(Finding(code, "warning", 0, message, evidence)) == family


def test_report_page_has_every_finding_beside_its_figure(broken):
    page = report_html(broken)
    sections = dict(re.findall(r'<section class="figure" id="fig-(\w+)">(.*?)</section>', page, re.S))
    assert set(sections) == {"thresholds", "complexity", "heads", "head_load", "grad_norms", "loss"}
    assert all(s.count("<svg") == 1 for s in sections.values())
    assert sections["grad_norms"].count('data-code="router_grad_zero"') == 3
    assert {f.code for f in broken.findings} == set(re.findall(r'data-code="(\w+)"', page))
    c = broken.counts
    assert f'id="verdict" class="verdict fail">FAIL: {c["pass"]} passed, {c["fail"]} failed' in page
    assert "<h2>Run configuration</h2>" in page and "<td>config.lr</td><td>0.002</td>" in page
    assert "Eval samples (last 12 of" in page


def test_compare_page_has_a_column_per_run_and_one_figure_each_family(broken):
    healthy = report.build_report(load_run(SAMPLES / "healthy_adaptive.jsonl"))
    page = compare_html(compare.build_comparison([healthy, broken]))
    assert "<th>healthy_adaptive</th><th>broken_no_gradient</th>" in page
    assert page.count("<svg") == 6
    assert "broken_no_gradient: <span class=\"code\">router_grad_zero</span>" in page
    assert 'class="differs"' in page                                  # configs differ somewhere
