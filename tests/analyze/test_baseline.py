"""`--baseline`: a run against a known-good reference run's normal band.

Known answers on constructed series (both sides of the band and of MIN_WINDOWS_OUT), the real
sample logs (broken vs healthy, healthy vs itself), and real training: two seeds of one small
config must not deviate, a run without the straight-through estimator must (slow tier).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from analyze import baseline as B
from analyze.loader import load_run
from cli import app

SAMPLES = Path(__file__).resolve().parents[2] / "sample_logs"
STEPS = np.arange(1, 101)  # 100 steps: 10 windows of 10


def _deviations(name, ref_values, run_values, scale=1.0):
    return [b for b in B.bands(name, (STEPS, ref_values), (STEPS, run_values), scale) if b.outside]


def test_log_band_is_a_ratio_around_a_flat_reference():
    ref = np.full(100, 2.0)  # no spread: the band is the floor, a factor of 1.25 either way
    band = B.bands("loss", (STEPS, ref), (STEPS, np.full(100, 2.0)), 1.0)[0]
    assert (band.lo, band.hi) == pytest.approx((2.0 / 1.25, 2.0 * 1.25))
    assert _deviations("loss", ref, np.full(100, 2.0 * 1.24)) == []
    assert len(_deviations("loss", ref, np.full(100, 2.0 * 1.26))) == 10
    assert len(_deviations("loss", ref, np.full(100, 2.0 / 1.26))) == 10


def test_routing_gradients_get_a_factor_of_three():
    ref = np.full(100, 0.05)  # a flat complexity gradient: the band is 0.05 / 3 .. 0.05 * 3
    band = B.bands("grad.complexity", (STEPS, ref), (STEPS, ref), 1.0)[0]
    assert (band.lo, band.hi) == pytest.approx((0.05 / 3, 0.05 * 3))
    for name in ("grad.router", "grad.complexity", "grad.threshold"):
        assert _deviations(name, ref, np.full(100, 0.05 * 2.9)) == []
        assert _deviations(name, ref, np.full(100, 0.05 / 2.9)) == []
        assert len(_deviations(name, ref, np.full(100, 0.05 * 3.1))) == 10
        assert len(_deviations(name, ref, np.full(100, 0.05 / 3.1))) == 10
    assert len(_deviations("grad_norm", ref, np.full(100, 0.05 * 1.3))) == 10  # others keep 1.25


def test_band_widens_with_the_reference_spread():
    # reference alternating 1 and 4 inside every window: q10..q90 in log = log 1..log 4 (at least),
    # widened by one spread each side: 4 * 4 = 16 is the top of the band
    ref = np.tile([1.0, 4.0], 50)
    band = B.bands("grad_norm", (STEPS, ref), (STEPS, np.full(100, 4.0)), 1.0)[0]
    assert band.hi == pytest.approx(16.0) and band.lo == pytest.approx(0.25)
    assert _deviations("grad_norm", ref, np.full(100, 15.0)) == []
    assert len(_deviations("grad_norm", ref, np.full(100, 17.0))) == 10


def test_linear_floor_is_a_share_of_the_natural_range():
    ref = np.full(100, 3.5)  # heads_mean of 8 heads: the floor is 0.1 * 8 = 0.8 heads
    assert _deviations("heads_mean", ref, np.full(100, 4.29), scale=8.0) == []
    assert len(_deviations("heads_mean", ref, np.full(100, 4.31), scale=8.0)) == 10


def test_a_zero_gradient_reads_zero_and_leaves_any_band():
    band = B.bands("grad.router", (STEPS, np.full(100, 0.1)), (STEPS, np.zeros(100)), 1.0)[0]
    assert band.value == 0.0 and band.outside


def _run_with(tmp_path, name, values):
    from tests import synthetic
    from moh import schema

    records = synthetic.generate(n_steps=200, n_layers=1, seed=0, phases=(schema.PHASE_PRETRAIN,))
    steps = [r for r in records if r["event"] == schema.STEP]
    for r, v in zip(steps, values):
        r["loss"] = float(v)
    return load_run(synthetic.write_jsonl(records, tmp_path / name / "run.jsonl"))


def test_a_series_deviates_from_min_windows_out(tmp_path):
    ref = _run_with(tmp_path, "ref", np.full(200, 1.0))
    for n_out, expect in ((B.MIN_WINDOWS_OUT - 1, 0), (B.MIN_WINDOWS_OUT, 1)):
        v = np.full(200, 1.0)
        v[200 - 20 * n_out:] = 3.0  # the last n_out windows of 20 logged steps
        found = [f for f in B.compare(_run_with(tmp_path, f"run{n_out}", v), ref) if f.evidence["series"] == "loss"]
        assert len(found) == expect, [f.message for f in found]
    (f,) = found
    assert (f.code, f.severity, f.layer) == ("baseline_deviation", "warning", None)
    ev = f.evidence
    assert ev["windows_out"] == B.MIN_WINDOWS_OUT and ev["windows_compared"] == 10
    assert ev["values"] == [3.0] * B.MIN_WINDOWS_OUT  # the run's window medians ...
    assert all(hi == pytest.approx(1.25) for _, hi in ev["band"])  # ... and the band they left
    assert ev["steps"] == [w[0] for w in ev["windows"]] and ev["reference"].endswith("run.jsonl")
    assert "above the reference run ref's normal band in 3 of 10 windows" in f.message


def _report(*args):
    r = CliRunner().invoke(app, ["report", *map(str, args), "--format", "json"])
    assert r.exit_code in (0, 1), r.output
    return json.loads(r.stdout)


def _deviating(doc):
    return {(f["evidence"]["series"], f["evidence"]["phase"], f["layer"]) for f in doc["findings"]
            if f["code"] == "baseline_deviation"}


def test_sample_without_straight_through_leaves_the_healthy_band():
    doc = _report(SAMPLES / "broken_no_gradient.jsonl", "--baseline", SAMPLES / "healthy_adaptive.jsonl")
    assert doc["baseline"].endswith("healthy_adaptive.jsonl")
    series = {s for s, _, _ in _deviating(doc)}
    assert {"grad.router", "grad.complexity", "grad.threshold"} <= series
    (f,) = [f for f in doc["findings"] if f["code"] == "baseline_deviation"
            and f["evidence"]["series"] == "grad.router" and f["evidence"]["phase"] == "pretrain"]
    assert f["evidence"]["values"][0] == 0.0 and f["evidence"]["windows_out"] == 10


def test_sample_with_unstable_lr_leaves_the_healthy_band():
    series = {s for s, _, _ in _deviating(_report(SAMPLES / "broken_unstable_lr.jsonl", "--baseline",
                                                  SAMPLES / "healthy_adaptive.jsonl"))}
    # lr 0.3 without clipping: the loss stays near 5-6 nats and the routing collapses to one
    # head; its gradient norm spikes (grad_explosion) but most windows stay inside the band
    assert {"loss", "heads_mean", "head_load_cv"} <= series


def test_a_run_against_itself_and_without_baseline():
    doc = _report(SAMPLES / "healthy_adaptive.jsonl", "--baseline", SAMPLES / "healthy_adaptive.jsonl")
    assert _deviating(doc) == set()
    assert _report(SAMPLES / "healthy_adaptive.jsonl")["baseline"] is None


def test_unreadable_baseline_is_one_line_and_exit_3(tmp_path):
    r = CliRunner().invoke(app, ["report", str(SAMPLES / "healthy_adaptive.jsonl"), "--baseline",
                                 str(tmp_path / "nope.jsonl")])
    assert r.exit_code == 3
    assert r.stderr.strip().startswith("error: baseline: ") and len(r.stderr.strip().splitlines()) == 1


def test_compare_takes_a_baseline_too():
    r = CliRunner().invoke(app, ["compare", str(SAMPLES / "healthy_adaptive.jsonl"),
                                 str(SAMPLES / "broken_no_gradient.jsonl"), "--baseline",
                                 str(SAMPLES / "healthy_adaptive.jsonl"), "--format", "json"])
    assert r.exit_code in (0, 1), r.output
    assert "baseline_deviation" in r.stdout


# ---- real training (slow): reseeds pass, a defect deviates --------------------------------------

SMALL = dict(n_layers=2, n_heads=4, d_model=32, d_ff=64, max_len=64, pretrain_epochs=4, instruct_epochs=8,
             batch_size=64, instruct_batch_size=16, log_every=1, eval_prompts=4, eval_max_new_tokens=6,
             warmup_steps=2)
NO_STRAIGHT_THROUGH = dict(straight_through=False, lb_weight=0, z_weight=0, complexity_weight=0, budget_weight=0)


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory):
    from moh.config import Config
    from moh.train import train

    out = {}
    for name, kw in (("seed1", {"seed": 1}), ("seed2", {"seed": 2}),
                     ("no_st", {"seed": 2, **NO_STRAIGHT_THROUGH})):
        d = tmp_path_factory.mktemp(name)
        assert train(Config(**{**SMALL, **kw}), d).status == "completed"
        out[name] = d / "run.jsonl"
    return out


@pytest.mark.slow
def test_two_seeds_of_one_config_do_not_deviate(small_runs):
    a, b = load_run(small_runs["seed1"]), load_run(small_runs["seed2"])
    assert B.compare(b, a) == [] and B.compare(a, b) == []


@pytest.mark.slow
def test_real_run_without_straight_through_deviates(small_runs):
    doc = _report(small_runs["no_st"], "--baseline", small_runs["seed1"])
    series = {s for s, _, _ in _deviating(doc)}
    assert {"grad.router", "grad.complexity", "grad.threshold"} <= series
