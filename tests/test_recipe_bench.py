"""bench/recipe_sweep.py and bench/bench_threads.py read their figures off real logs correctly."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_threads  # noqa: E402
import recipe_sweep  # noqa: E402

SAMPLE = ROOT / "sample_logs" / "healthy_adaptive.jsonl"
BROKEN = ROOT / "sample_logs" / "broken_unstable_lr.jsonl"


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_summary_of_the_sample_run_matches_its_records():
    recs = _records(SAMPLE)
    steps = [r for r in recs if r["event"] == "step"]
    row = recipe_sweep.summarise(SAMPLE, "embedded")
    for phase, key in (("pretrain", "pre_loss"), ("instruct", "ins_loss")):
        ph = [r for r in steps if r["phase"] == phase]
        last = [r["loss"] for r in ph if r["epoch"] == ph[-1]["epoch"]]
        assert abs(row[key] - statistics.fmean(last)) < 1e-12
    pre = [r for r in steps if r["phase"] == "pretrain"]
    means = {e: statistics.fmean(r["loss"] for r in pre if r["epoch"] == e) for e in sorted({r["epoch"] for r in pre})}
    first = next(e for e, m in means.items() if m <= 0.40)
    assert row["target_epoch"] == first and means[first - 1] > 0.40
    assert row["to_target_s"] == [r for r in pre if r["epoch"] == first][-1]["elapsed"]
    assert row["em"] == [r for r in recs if r["event"] == "eval"][-1]["exact_match"]
    assert row["exact"] is None  # the mountains answer is a reference-corpus figure
    assert row["verdict"] == "pass"


def test_summary_of_a_broken_run_fails_and_names_its_findings():
    row = recipe_sweep.summarise(BROKEN, "embedded")
    assert row["verdict"] == "fail" and row["target_epoch"] is None
    assert "loss" in row["failed"] and row["codes"]


def test_candidate_text_is_name_then_overrides():
    assert recipe_sweep.parse_candidate("U24:lr=2e-3,pretrain_epochs=24") == ("U24", ["lr=2e-3", "pretrain_epochs=24"])
    assert recipe_sweep.parse_candidate("base") == ("base", [])


def test_phase_times_are_step_spacing_and_eval_gap():
    recs = _records(SAMPLE)
    got = bench_threads.phase_times(SAMPLE)
    for phase in ("pretrain", "instruct"):
        ph = [r for r in recs if r["event"] == "step" and r["phase"] == phase]
        ev = next(r for r in recs if r["event"] == "eval" and r["phase"] == phase)
        per_step = (ph[-1]["time"] - ph[0]["time"]) / (ph[-1]["step"] - ph[0]["step"])
        assert abs(got[phase]["step_ms"] - 1e3 * per_step) < 1e-9
        assert abs(got[phase]["eval_s"] - (ev["time"] - ph[-1]["time"])) < 1e-12
        assert got[phase]["step_ms"] > 0 and got[phase]["eval_s"] > 0
