"""Figures that read right: long run names fit, the band swatch matches the band, aux-loss ticks
are few and in one notation, imported logs count whole epochs, lines stop at missing data,
phase boundaries on every time-series figure, SVG text kept as text."""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib.colors as mcolors
import numpy as np
import pytest
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from analyze import plots
from analyze.loader import load_records, load_run
from analyze.rustgpt import import_log
from tests.faults import rust_log
from tests.synthetic import generate

SAMPLES = Path(__file__).resolve().parents[2] / "sample_logs"
TIME_SERIES = ("thresholds", "complexity", "heads", "grad_norms", "loss")
LONG = "run-" + "adaptive-target-heads-3.5-lr-0.003-" * 3 + "seed-1337"


def _run(name: str, records=None, **knobs):
    records = records if records is not None else generate(**{"n_steps": 200, "n_layers": 2, **knobs})
    return load_records(records, Path(f"/runs/{name}/run.jsonl"))


def _draw(family, run, **kw):
    return plots.FAMILIES[family](run, **kw)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    d = tmp_path_factory.mktemp("rust")
    import_log(rust_log(d), d / "run.jsonl")
    return load_run(d / "run.jsonl")


@pytest.mark.parametrize("family", list(plots.FAMILIES))
def test_a_long_run_name_fits_in_the_title(family):
    axes = _draw(family, _run(LONG))
    fig = axes[0].figure
    title = fig._suptitle
    box = title.get_window_extent(fig.canvas.get_renderer())
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width, (box, fig.bbox.width)
    assert LONG in title.get_text().replace("\n", "")        # whole, not cut
    fig.clear()


def test_a_short_title_keeps_its_size():
    axes = _draw("loss", _run("short"))
    assert axes[0].figure._suptitle.get_fontsize() == plots.RC["figure.titlesize"]
    assert "\n" not in axes[0].figure._suptitle.get_text()


@pytest.mark.parametrize("family", ["thresholds", "complexity", "heads"])
def test_band_swatch_has_the_band_colour(family):
    axes = _draw(family, _run("one"))
    fig = axes[0].figure
    (swatch,) = [h for leg in fig.legends for h, t in zip(leg.legend_handles, leg.get_texts())
                 if t.get_text() == "min–max over tokens"]
    band = next(c for c in axes[0].collections if c.get_alpha() == pytest.approx(0.18))
    assert np.allclose(swatch.get_facecolor()[:3], band.get_facecolor()[0][:3])
    assert np.allclose(swatch.get_facecolor()[:3], mcolors.to_rgb("tab:blue"))   # the first run's colour
    fig.clear()


def _visible_ticks(ax, axis="y"):
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    ticks = ax.get_yticks() if axis == "y" else ax.get_xticks()
    return [t for t in ticks if min(lo, hi) <= t <= max(lo, hi)]


def test_aux_loss_axis_has_few_ticks_in_one_notation():
    run = load_run(SAMPLES / "healthy_adaptive.jsonl")
    axes = plots.plot_loss(run)
    aux = axes[1]
    aux.figure.canvas.draw()
    labels = [t.get_text() for t in aux.get_yticklabels() if t.get_text()]
    assert 3 <= len(labels) <= 8, labels
    assert all(re.fullmatch(r"1e[+-]\d\d", s) for s in labels), labels
    lm = [t.get_text() for t in axes[0].get_yticklabels() if t.get_text()]
    assert "0.5" in lm and "1" in lm                           # a few decades: plain numbers kept
    aux.figure.clear()


@pytest.mark.parametrize("family", ["thresholds", "heads", "grad_norms", "loss"])
def test_imported_log_is_drawn_against_whole_epochs(family, imported):
    axes = _draw(family, imported)
    axes[0].figure.canvas.draw()
    assert any(a.get_xlabel() == "epoch" for a in axes)
    for a in axes:
        assert all(float(t).is_integer() for t in _visible_ticks(a, "x")), a.get_xticks()
    axes[0].figure.clear()


def test_engine_log_keeps_a_step_axis():
    axes = _draw("loss", _run("engine"))
    assert axes[0].get_xlabel() == "step"
    axes[0].figure.clear()


def _gap_run():
    records = [r for r in generate(n_steps=240, n_layers=2, seed=3)
               if not (r.get("event") == "step" and 80 <= r["step"] < 160)]
    return _run("gap", records)


@pytest.mark.parametrize("family", TIME_SERIES)
def test_lines_stop_at_missing_data(family):
    run = _gap_run()
    steps = run.steps["step"].to_numpy()
    lo, hi = steps[steps < 80].max(), steps[steps >= 160].min()     # the last step before, first after
    axes = _draw(family, run)
    drawn = 0
    for a in axes:
        for line in a.get_lines():
            x, y = (np.asarray(v, dtype=float) for v in line.get_data())
            if len(x) < 10:
                continue                                          # reference lines, markers
            ok = np.isfinite(x) & np.isfinite(y)
            for i in range(len(x) - 1):
                if ok[i] and ok[i + 1]:
                    assert not (x[i] <= lo and x[i + 1] >= hi), (family, x[i], x[i + 1])
            drawn += 1
    assert drawn
    axes[0].figure.clear()


def test_a_run_without_gaps_has_unbroken_lines():
    axes = _draw("thresholds", _run("whole"))
    mean = max(axes[0].get_lines(), key=lambda l: len(l.get_xdata()))
    assert np.isfinite(np.asarray(mean.get_ydata(), dtype=float)).all()
    axes[0].figure.clear()


@pytest.mark.parametrize("family", TIME_SERIES)
def test_phase_boundary_on_every_time_series_figure(family):
    run = _run("phased")
    boundary = float(run.steps.loc[run.steps["phase"] == "instruct", "step"].min())
    axes = _draw(family, run)
    for a in axes:
        vlines = [l for l in a.get_lines() if l.get_linestyle() == ":" and len(set(l.get_xdata())) == 1]
        assert any(float(l.get_xdata()[0]) == boundary for l in vlines), family
    labels = [t.get_text() for leg in axes[0].figure.legends for t in leg.get_texts()]
    assert "phase boundary" in labels
    axes[0].figure.clear()


def test_svg_text_is_text(tmp_path):
    run = _run("svg-run-name")
    (path,) = plots.write_figures(run, tmp_path, fmt="svg", families=["loss"], jobs=1)
    svg = path.read_text(encoding="utf-8")
    assert "<text" in svg and "svg-run-name" in svg
    assert not re.search(r'id="DejaVuSans-', svg)                # no glyph outlines
