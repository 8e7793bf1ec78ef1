"""bench/calibrate.py: the cache key, the margin tables, the healthy/broken verdicts, on real logs."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import calibrate  # noqa: E402
import calibrate_report  # noqa: E402

SAMPLES = ROOT / "sample_logs"


def test_cache_key_is_the_configuration_only():
    a = calibrate.Member("moh", 2, "embedded")
    assert a.key() == calibrate.Member("moh", 2, "embedded").key()
    assert a.key().startswith("embedded-moh-s2-")
    keys = {m.key() for m in calibrate.population() + calibrate.broken_population()}
    assert len(keys) == 18 + len(calibrate.BROKEN)  # every member its own run
    ref = [m for m in calibrate.population() if m.corpus == "reference"]
    assert all("--data ../shared/rustgpt/data" in m.command and "--set" not in m.command for m in ref)


def test_population_is_four_and_two_seeds_of_every_router():
    pop = calibrate.population()
    for corpus, n in (("embedded", 4), ("reference", 2)):
        for router in ("adaptive", "moh", "dense"):
            assert sorted(m.seed for m in pop if m.corpus == corpus and m.router == router) == list(range(1, n + 1))


def _margin(code, value, threshold, fires, joint=False, crossed=None, layer=None):
    from analyze.rules.margins import Margin

    return Margin(code, "s", value, threshold, fires, layer, None, joint).to_dict()


def test_rule_clearance_joint_conditions_need_all_single_need_one():
    # joint: one condition crossed (margin -0.5), the other clear (0.8): the rule is clear by 0.8
    clear = calibrate_report.rule_clearance([_margin("r", 0.15, 0.1, ">=", joint=True),
                                             _margin("r", 0.02, 0.1, ">=", joint=True)])
    assert clear["r"][0] == pytest.approx(0.8) and clear["r"][1] is False
    # single conditions: the worst one decides, and one crossing fires the rule
    clear = calibrate_report.rule_clearance([_margin("q", 0.05, 0.1, ">"), _margin("q", 0.2, 0.1, ">")])
    assert clear["q"][0] == pytest.approx(-1.0) and clear["q"][1] is True


def test_margin_sign_and_units():
    from analyze.rules.margins import Margin

    assert Margin("c", "s", 0.05, 0.2, ">=").margin == pytest.approx(0.75)   # a quarter of the threshold
    assert Margin("c", "s", 0.4, 0.02, "<").margin == pytest.approx(19.0)   # 20x the threshold
    assert Margin("c", "s", 0.0, 0.0, ">").margin == 0 and not Margin("c", "s", 0.0, 0.0, ">").crossed
    assert Margin("c", "s", 3.0, 2.0, ">=").crossed and math.isnan(Margin("c", "s", math.nan, 1, ">").margin)


def test_report_of_real_logs_healthy_clean_broken_caught(capsys):
    runs = {calibrate.Member("adaptive", 1337, "embedded"): SAMPLES / "healthy_adaptive.jsonl",
            calibrate.Member("dense", 1337, "embedded"): SAMPLES / "dense_baseline.jsonl",
            calibrate.Member("adaptive", 1, "embedded", (), "no_straight_through"): SAMPLES / "broken_no_gradient.jsonl"}
    assert calibrate_report.report_population(runs) == 0
    out = capsys.readouterr().out
    assert "| `router_grad_zero` | 1/1 |" in out and "no_straight_through |" in out
    assert "| embedded-adaptive-s1337 | adaptive | embedded | pass | — | — |" in out


def test_a_healthy_run_with_a_warning_fails_the_calibration(capsys):
    # the sample with an unstable LR, presented as healthy: the calibration must say so (exit 1)
    runs = {calibrate.Member("adaptive", 9, "embedded"): SAMPLES / "broken_unstable_lr.jsonl"}
    assert calibrate_report.report_population(runs) == 1
    assert "calibrate: healthy run embedded-adaptive-s9: verdict fail" in capsys.readouterr().out


def test_every_rule_counts_against_a_healthy_run(tmp_path, capsys):
    """No rule is left out of the healthy verdict (predictor_growth once was, issue 18): a run
    presented as healthy whose predictor norm grows 10x linearly to the end fails the calibration
    on that finding alone; the same log with the norm levelled off after a rise passes."""
    import json

    from tests.analyze.conftest import synthetic_log

    def levelled(path):  # pred_norm rises 0.1 -> 0.5 over 5-25% of the run, then flat
        recs = [json.loads(x) for x in path.read_text().splitlines()]
        steps = [r for r in recs if r.get("layers")]
        for i, r in enumerate(steps):
            u = min(max((i / len(steps) - 0.05) / 0.2, 0.0), 1.0)
            for lay in r["layers"]:
                lay["pred_norm"] = 0.1 + 0.4 * u
        path.write_text("".join(json.dumps(r) + "\n" for r in recs))
        return path

    growing = synthetic_log(tmp_path / "a" / "run.jsonl", predictor_growth=True)
    flat = levelled(synthetic_log(tmp_path / "b" / "run.jsonl", predictor_growth=True))
    runs = {calibrate.Member("adaptive", 7, "embedded"): growing,
            calibrate.Member("adaptive", 8, "embedded"): flat}
    assert calibrate_report.report_population(runs) == 1
    out = capsys.readouterr().out
    assert ("| embedded-adaptive-s7 | adaptive | embedded | pass | — | "
            "warning:predictor_growth@L0, warning:predictor_growth@L1 |") in out
    assert "| embedded-adaptive-s8 | adaptive | embedded | pass | — | — |" in out
    assert "calibrate: healthy run embedded-adaptive-s7: verdict pass, findings predictor_growth" in out
    assert "embedded-adaptive-s8: verdict" not in out
    assert "| `predictor_growth` | 1/2 |" in out
    assert calibrate_report.report_population({calibrate.Member("adaptive", 8, "embedded"): flat}) == 0


@pytest.mark.parametrize("keep, left", [(False, {"run.jsonl", "DONE"}),
                                        (True, {"run.jsonl", "DONE", "model.pt"})])
def test_trained_member_keeps_the_model_only_on_request(tmp_path, monkeypatch, keep, left):
    """bench/allocation.py needs model.pt; the cache otherwise keeps only the log. A stand-in for
    `moh train` writes the three files a real run leaves (log, model, checkpoint)."""
    fake = ("import sys, pathlib; d = pathlib.Path(sys.argv[sys.argv.index('--out') + 1]); "
            "d.mkdir(parents=True); [(d / n).write_text('x') for n in ('run.jsonl', 'model.pt', 'checkpoint.pt')]")
    monkeypatch.setattr(calibrate, "moh_command", lambda: [sys.executable, "-c", fake])
    m = calibrate.Member("adaptive", 3, "embedded")
    log = calibrate.train_member(m, tmp_path, log=lambda s: None, keep_model=keep)
    assert log == tmp_path / m.key() / "run.jsonl"
    assert {p.name for p in (tmp_path / m.key()).iterdir()} == left
