"""Plots: every family draws from synthetic runs, overlays, skips missing data; decimation keeps extremes."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from analyze import plots
from analyze.decimate import bucket_mean, decimate, head_load_matrix, phase_boundaries
from analyze.loader import load_records
from tests.synthetic import generate, write_synthetic
from cli import app


def _run(name: str, **knobs):
    knobs.setdefault("n_steps", 200)
    knobs.setdefault("n_layers", 2)
    return load_records(generate(**knobs), Path(f"/runs/{name}/run.jsonl"))


@pytest.fixture(scope="module")
def healthy():
    return _run("healthy", seed=0)


@pytest.fixture(scope="module")
def broken():
    return _run("broken", seed=1, router_grad_zero=True, dead_heads=1, loss_diverge=True)


@pytest.fixture(scope="module")
def dense():
    return _run("dense", seed=2, router="dense")


def _close(axes):
    axes[0].figure.clear()


def _legend_texts(fig):
    texts = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    for a in fig.axes:
        if a.get_legend() is not None:
            texts += [t.get_text() for t in a.get_legend().get_texts()]
    return texts


# ---- decimation ------------------------------------------------------------------------------


def test_decimate_keeps_global_extremes_and_bounds_points():
    rng = np.random.default_rng(0)
    n = 200_000
    frame = pd.DataFrame({"step": np.arange(n), "a": rng.standard_normal(n), "b": rng.standard_cauchy(n)})
    frame.loc[123_457, "a"] = 50.0   # a lone spike must survive
    frame.loc[77, "b"] = np.nan
    before = frame.copy()
    out = decimate(frame, ["a", "b"], buckets=100)
    assert len(out) <= 100 * (2 + 2 * 2)
    for c in ("a", "b"):
        assert out[c].max() == frame[c].max()
        assert out[c].min() == frame[c].min()
    assert out["step"].iloc[0] == 0 and out["step"].iloc[-1] == n - 1
    assert out.index.isin(frame.index).all()         # a subset of the input rows
    pd.testing.assert_frame_equal(frame, before)     # input not mutated


def test_decimate_by_group_keeps_each_groups_extremes():
    rng = np.random.default_rng(1)
    n, layers = 20_000, 3
    frame = pd.DataFrame({"step": np.repeat(np.arange(n), layers), "layer": np.tile(np.arange(layers), n),
                          "v": rng.standard_normal(n * layers)})
    out = decimate(frame, ["v"], by="layer", buckets=50)
    assert (out.groupby("layer").size() <= 50 * 4).all()
    pd.testing.assert_series_equal(out.groupby("layer")["v"].max(), frame.groupby("layer")["v"].max())
    pd.testing.assert_series_equal(out.groupby("layer")["v"].min(), frame.groupby("layer")["v"].min())


def test_decimate_small_frame_untouched():
    frame = pd.DataFrame({"step": range(10), "v": range(10)})
    assert decimate(frame, ["v"], buckets=5) is frame


def test_bucket_mean_and_phase_boundaries():
    frame = pd.DataFrame({"step": np.arange(100), "v": np.r_[np.zeros(50), np.ones(50)],
                          "phase": ["pretrain"] * 70 + ["instruct"] * 30})
    trend = bucket_mean(frame, ["v"], buckets=2)
    assert trend["v"].tolist() == [0.0, 1.0]
    b = phase_boundaries(frame)
    assert b["step"].tolist() == [70] and b["phase"].tolist() == ["instruct"]


def test_head_load_matrix_last_window():
    hl = pd.DataFrame({"step": np.repeat([0, 90, 100], 2), "layer": 0, "head": [0, 1] * 3,
                       "load": [1.0, 1.0, 0.2, 0.4, 0.4, 0.6]})
    assert head_load_matrix(hl, window="all").loc[0].round(3).tolist() == [0.533, 0.667]
    assert head_load_matrix(hl, window="last").loc[0].tolist() == [pytest.approx(0.3), pytest.approx(0.5)]


# ---- families --------------------------------------------------------------------------------

FAMILIES = ["thresholds", "complexity", "heads", "head_load", "grad_norms", "loss"]


@pytest.mark.parametrize("family", FAMILIES)
def test_family_draws_with_titles_and_labels(family, healthy):
    axes = plots.FAMILIES[family](healthy)
    fig = axes[0].figure
    assert fig.get_suptitle()
    for a in axes:
        assert a.get_title()
        assert a.has_data() or a.images
    assert any(a.get_xlabel() for a in axes)
    assert any(a.get_ylabel() for a in axes) or fig.get_supylabel()
    _close(axes)


@pytest.mark.parametrize("family", ["thresholds", "complexity", "heads", "grad_norms", "loss"])
def test_two_runs_overlay_with_a_legend_entry_each(family, healthy, broken):
    axes = plots.FAMILIES[family]([healthy, broken])
    texts = " | ".join(_legend_texts(axes[0].figure))
    assert "healthy" in texts and "broken" in texts
    if family in ("thresholds", "complexity", "heads"):
        # one band + one mean line per run and layer
        for a in axes:
            assert len(a.lines) == 2
            assert len([c for c in a.collections if c.get_label().startswith("_")]) >= 2
    _close(axes)


def test_head_load_one_panel_per_run_and_dead_head_marked(healthy, broken):
    axes = plots.plot_head_load([healthy, broken])
    assert [a.get_title().split(":")[0] for a in axes] == ["healthy", "broken"]
    assert axes[0].images[0].get_array().shape == (2, 8)
    assert not axes[0].patches and axes[1].patches  # the dead head has a red frame
    _close(axes)


def test_dense_run_skipped_with_warning_from_thresholds(healthy, dense):
    with pytest.warns(plots.PlotWarning, match="dense: no threshold"):
        axes = plots.plot_thresholds([healthy, dense])
    assert len(axes[0].lines) == 1
    _close(axes)
    with pytest.raises(plots.MissingDataError):
        plots.plot_thresholds(dense)


def test_zero_router_grad_named_in_panel(broken):
    axes = plots.plot_grad_norms(broken)
    notes = [t.get_text() for t in axes[1].texts]
    assert any("router" in t and "≡ 0" in t for t in notes)
    assert axes[0].get_yscale() == "log"
    _close(axes)


def test_phase_boundary_marked_on_loss(healthy):
    axes = plots.plot_loss(healthy)
    assert any("instruct" in t.get_text() for t in axes[0].texts)
    _close(axes)


def test_time_axis(healthy):
    axes = plots.plot_loss(healthy, x="elapsed")
    assert axes[0].get_xlabel().startswith("elapsed time")
    _close(axes)


def test_caller_axes_are_used(healthy):
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.subplots()
    out = plots.plot_thresholds(healthy, ax=ax, layers=[1])
    assert out[0] is ax and ax.get_title() and ax.get_ylabel()
    with pytest.raises(ValueError):
        plots.plot_thresholds(healthy, ax=ax)  # two layers, one axes
    fig.clear()


def test_write_figures_skips_missing_and_writes_atomically(tmp_path, dense):
    with pytest.warns(plots.PlotWarning) as record:
        written = plots.write_figures(dense, tmp_path / "out", fmt="svg")
    names = {p.name for p in written}
    assert names == {"heads.svg", "grad_norms.svg", "loss.svg"}
    assert {"thresholds", "complexity", "head_load"} <= {str(w.message).split(":")[0] for w in record}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(names)  # no temp files left
    assert all(p.read_text().lstrip().startswith("<?xml") for p in written)


# ---- CLI -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    d = tmp_path_factory.mktemp("logs")
    return (write_synthetic(d / "healthy" / "run.jsonl", n_steps=150, n_layers=2),
            write_synthetic(d / "dense" / "run.jsonl", n_steps=150, n_layers=2, router="dense", seed=3))


def test_cli_plot_writes_png_files(tmp_path, logs):
    out = tmp_path / "figs" / "nested"
    result = CliRunner().invoke(app, ["plot", str(logs[0]), str(logs[1]), "-o", str(out)])
    assert result.exit_code == 0, result.output
    paths = [Path(line) for line in result.stdout.splitlines()]
    assert {p.name for p in paths} == {f"{f}.png" for f in FAMILIES}
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "dense" in result.stderr and "threshold" in result.stderr  # left out, with a warning
    assert "Traceback" not in result.output


def test_cli_plot_unwritable_output_exits_3(tmp_path, logs):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = CliRunner().invoke(app, ["plot", str(logs[0]), "-o", str(blocker / "sub")])
    assert result.exit_code == 3, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_cli_plot_usage_errors_exit_2(tmp_path, logs):
    result = CliRunner().invoke(app, ["plot", str(logs[0]), "-o", str(tmp_path), "--format", "jpg"])
    assert result.exit_code == 2, result.output
    result = CliRunner().invoke(app, ["plot", str(tmp_path / "absent.jsonl"), "-o", str(tmp_path)])
    assert result.exit_code == 3, result.output
    result = CliRunner().invoke(app, ["plot", str(logs[0]), "-o", str(tmp_path), "--jobs", "0"])
    assert result.exit_code == 2 and "--jobs" in result.output, result.output
    result = CliRunner().invoke(app, ["plot", str(logs[0]), "-o", str(tmp_path / "one"), "--jobs", "1"])
    assert result.exit_code == 0 and len(list((tmp_path / "one").glob("*.png"))) == len(FAMILIES), result.output


def test_write_figures_in_forked_workers_matches_serial(tmp_path, healthy, dense):
    with pytest.warns(plots.PlotWarning, match="dense"):
        forked = plots.write_figures([healthy, dense], tmp_path / "a", jobs=2)
    with pytest.warns(plots.PlotWarning, match="dense"):
        serial = plots.write_figures([healthy, dense], tmp_path / "b", jobs=1)
    assert [p.name for p in forked] == [p.name for p in serial] == [f"{f}.png" for f in FAMILIES]
    for a, b in zip(forked, serial):  # Agg PNGs are deterministic: the same pixels, the same bytes
        assert a.read_bytes() == b.read_bytes(), a.name


def test_model_wide_complexity_of_an_imported_log_is_drawn_as_one_panel():
    # Reference Rust trainer logs print complexity once per epoch line (step columns, not per layer).
    start = {"event": "run_start", "schema_version": 1, "run_id": "r", "time": 0.0, "config": {},
             "model": {"n_layers": 2, "n_heads": 8, "d_model": 0, "router": "adaptive", "params": 0},
             "world_size": 1, "source": "rustgpt"}
    steps = [{"event": "step", "step": s, "epoch": s, "phase": "pretrain", "time": float(s), "loss": 1.0,
              "lm_loss": 1.0, "lr": 1e-3, "grad_norm": 1.0, "grad_norm_clipped": 1.0, "grad_norms": {}, "aux": {},
              "complexity_mean": 0.5, "complexity_min": 0.2 + 0.01 * s, "complexity_max": 0.9,
              "layers": [{"layer": i, "heads_mean": 4.0, "threshold_mean": 0.5} for i in range(2)]}
             for s in range(10)]
    run = load_records([start, *steps], "imported.jsonl")
    assert run.layers["complexity_mean"].isna().all()  # the premise: nothing per layer
    axes = plots.plot_complexity(run)
    assert len(axes) == 1 and "model-wide" in axes[0].get_title()
    assert run.layers["complexity_mean"].isna().all()  # the input run is not mutated
    _close(axes)
