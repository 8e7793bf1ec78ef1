"""`moh plot --findings`: each finding marked at its evidence steps on the figure of its series."""

from __future__ import annotations


import numpy as np
import pytest
from typer.testing import CliRunner

from analyze import findings
from tests import synthetic
from analyze.loader import load_run
from analyze.plots import plot_complexity, plot_grad_norms
from analyze.plots.markers import family_of, mark
from cli import app


def _run(tmp_path, **knobs):
    path = synthetic.write_jsonl(synthetic.generate(n_steps=200, n_layers=2, seed=0, **knobs),
                                 tmp_path / "run" / "run.jsonl")
    return load_run(path)


def _marked_x(axes, code):
    out = []
    for a in np.ravel(axes):
        out.append(sorted(float(line.get_xdata()[0]) for line in a.get_lines() if line.get_gid() == f"finding:{code}"))
    return out


@pytest.mark.parametrize("finding, family", [
    ({"code": "router_grad_zero", "evidence": {"group": "router"}}, "grad_norms"),
    ({"code": "loss_divergence", "evidence": {}}, "loss"),
    ({"code": "complexity_uninformative", "evidence": {}}, "complexity"),
    ({"code": "dead_heads", "evidence": {}}, "head_load"),
    ({"code": "silent_zero", "evidence": {"stat": "threshold_mean"}}, "thresholds"),
    ({"code": "constant_stat", "evidence": {"stat": "heads_mean"}}, "heads"),
    ({"code": "baseline_deviation", "evidence": {"series": "grad.router"}}, "grad_norms"),
    ({"code": "baseline_deviation", "evidence": {"series": "head_load_cv"}}, "head_load"),
    ({"code": "constant_stat", "evidence": {"stat": "pred_norm"}}, None),  # no figure draws it
])
def test_family_of_a_finding(finding, family):
    assert family_of(finding) == family


def test_markers_at_the_evidence_steps_on_every_panel_of_a_model_wide_finding(tmp_path):
    run = _run(tmp_path, router_grad_zero=True)
    (f,) = [f.to_dict() for f in findings.find_all(run) if f.code == "router_grad_zero"][:1]
    axes = plot_grad_norms(run)
    assert mark(axes, "grad_norms", [(f, run)], [run]) == 1
    assert mark(axes, "loss", [(f, run)], [run]) == 0  # not the loss figure's series
    steps = [float(s) for s in sorted(f["evidence"]["steps"])]
    assert steps and _marked_x(axes, "router_grad_zero") == [steps, steps]


def test_a_layer_finding_marks_its_layer_panel_only(tmp_path):
    run = _run(tmp_path)
    f = {"code": "complexity_uninformative", "severity": "warning", "layer": 1,
         "evidence": {"steps": [150, 160], "values": [0.1, 0.1], "window_first_step": 150, "window_last_step": 200}}
    axes = plot_complexity(run)
    mark(axes, "complexity", [(f, run)], [run])
    titles = [a.get_title() for a in np.ravel(axes)]
    marked = dict(zip(titles, _marked_x(axes, "complexity_uninformative")))
    assert marked == {"layer 0": [], "layer 1": [150.0, 160.0]}
    spans = [p for a in np.ravel(axes) for p in a.patches if p.get_gid() == "finding:complexity_uninformative"]
    assert len(spans) == 1  # the judged window, on layer 1 only


def test_cli_plot_findings_writes_the_markers(tmp_path):
    log = synthetic.write_jsonl(synthetic.generate(n_steps=200, n_layers=2, seed=0, router_grad_zero=True),
                                tmp_path / "run.jsonl")
    for flag, present in (([], False), (["--findings"], True)):
        out = tmp_path / ("with" if present else "without")
        r = CliRunner().invoke(app, ["plot", str(log), "-o", str(out), "--format", "svg", "--jobs", "1", *flag])
        assert r.exit_code == 0, r.output
        svg = (out / "grad_norms.svg").read_text()
        assert ('id="finding:router_grad_zero' in svg) is present
        assert "finding:" not in (out / "heads.svg").read_text()  # nothing about heads was found
