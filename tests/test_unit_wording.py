"""What an expert log is called in the report and the figures (issue 12): the routing-metrics
header, the run line, the head-load heatmap and the heads-per-token figure say "expert" on a
moh.monitor log with routing.unit = "expert", and still "head" on an engine log."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from analyze.load import load_run  # noqa: E402
from analyze.plots.head_load import plot_head_load  # noqa: E402
from analyze.plots.layer_stats import plot_heads  # noqa: E402
from analyze.render.compact import report_text  # noqa: E402
from analyze.render.html import report_html  # noqa: E402
from analyze.report import build_report, metric_rows, render_md  # noqa: E402
from moh.monitor import Recorder  # noqa: E402


def _log(tmp_path, unit):
    """A real recorder log: 2 layers x 4 units, 30 steps; unit 3 never used (dead)."""
    sel = torch.zeros(16, 4, dtype=torch.bool)
    sel[torch.arange(16), torch.arange(16) % 3] = True
    with Recorder(tmp_path / unit, unit=unit, top_k=1) as rec:
        for step in range(1, 31):
            for layer in (0, 1):
                rec.routing(layer, selected=sel, probs=sel.float() * 0.7 + 0.075)
            rec.step(step, loss=3.0 - step / 20)
    return load_run(tmp_path / unit / "run.jsonl")


@pytest.fixture(params=["head", "expert"])
def unit_and_report(request, tmp_path):
    return request.param, build_report(_log(tmp_path, request.param))


def test_metrics_header_and_run_line_use_the_unit(unit_and_report):
    unit, rep = unit_and_report
    other = "expert" if unit == "head" else "head"
    for text in (render_md(rep).replace("\\~", "~"), report_text(rep), report_html(rep)):
        assert f"Dead {unit}s" in text and f"Dead {other}s" not in text
        assert f"{unit.capitalize()}s~loss" in text
        assert f"2 layers x 4 {unit}s" in text
    assert [r[3] for r in metric_rows(rep)] == ["25%", "25%"]  # one dead unit of four per layer


def test_figures_use_the_unit(unit_and_report):
    unit, rep = unit_and_report
    other = "expert" if unit == "head" else "head"
    axes = plot_head_load(rep.run)
    title = axes[0].figure._suptitle.get_text()
    assert title.startswith(f"{unit.capitalize()} load per layer and {unit}") and other not in title.lower()
    assert axes[0].get_xlabel() == unit
    axes = plot_heads(rep.run)
    title = axes.ravel()[0].figure._suptitle.get_text()
    assert title.startswith(f"{unit.capitalize()}s per token") and other not in title.lower()


def test_compare_labels_use_the_unit_of_the_runs(tmp_path):
    from analyze.compare import build_comparison

    experts = [build_report(_log(tmp_path / str(i), "expert")) for i in range(2)]
    labels = [r.label for r in build_comparison(experts).metrics]
    assert any(lb.startswith("experts per token") for lb in labels) and not any("head" in lb for lb in labels)
    mixed = build_comparison([experts[0], build_report(_log(tmp_path / "h", "head"))])
    assert any(r.label.startswith("heads per token") for r in mixed.metrics)  # a mix keeps the engine's word


def test_findings_say_expert_in_message_and_action(tmp_path):
    from analyze.findings import find_all

    run = _log(tmp_path, "expert")
    dead = [f for f in find_all(run) if f.code == "dead_heads"]
    assert dead and all("expert" in f.message and "head" not in f.message for f in dead)
    assert all("experts" in f.action and "head" not in f.action for f in dead)
