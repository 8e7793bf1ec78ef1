"""bench/step_ab.py's variants change what they say they change, and bench/router_floor.py
still runs against the engine's router API (its null router broke once when the routers'
forward pass grew a keyword). No timing is asserted: the figures are the benchmarks' business."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import step_ab  # noqa: E402
from moh.config import Config  # noqa: E402
from moh.data import load_corpus  # noqa: E402

CFG = Config()


def _b_step(name):
    """B's trainer after one step in its variant's context: (trainer, loss, routings)."""
    trainer, context = step_ab._variant(name, CFG, load_corpus(None))
    with context():
        loss = trainer.step()
    return trainer, loss, trainer.last[1]


def test_the_variants_change_what_they_name():
    _, _, routings = _b_step("per-token-aux")
    assert all(r.sums is None for r in routings)  # the aux objective's per-token path
    a = step_ab.Trainer(CFG, load_corpus(None))
    a.step()
    assert all(r.sums is not None for r in a.last[1])  # A: the router node's own sums

    _, _, routings = _b_step("no-gates")
    assert all(r.gates is None for r in routings) and all(r.probs is not None for r in routings)

    _, _, routings = _b_step("no-ranks")
    assert set(routings[0].difficulty.unique().tolist()) == {0.5}

    _, _, routings = _b_step("no-entropy")  # every difficulty ties: the mean rank, 0.5
    d = routings[0].difficulty
    assert set(d[torch.isfinite(d)].unique().tolist()) == {0.5} and not torch.isfinite(d).all()

    for name, aux_added in (("no-aux", False), ("no-gates", True)):  # the step's loss: LM loss (+ aux)
        trainer, context = step_ab._variant(name, CFG, load_corpus(None))
        idx, targets = trainer.batches[0]  # what its first step trains on, before any update
        with torch.no_grad(), context():
            _, loss_sum, _ = trainer.model(idx, targets)
        lm = float(loss_sum / (targets != -100).sum())
        with context():
            loss = trainer.step().detach().item()
        assert math.isclose(loss, lm, rel_tol=1e-6) != aux_added, (name, loss, lm)

    dense, _, routings = _b_step("dense")
    assert dense.cfg.router == "dense" and all(r.probs is None for r in routings)


def test_a_variant_measurement_pairs_every_step():
    r = step_ab.measure("no-gates", CFG, load_corpus(None), steps=2)
    assert set(r) == {"a_ms", "b_ms", "saved_us", "saved_ci95_us"}
    lo, hi = r["saved_ci95_us"]
    assert lo <= r["saved_us"] <= hi and r["a_ms"] > 0 and r["b_ms"] > 0


def test_router_floor_runs_every_stage():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "router_floor.py"), "--reps", "1", "--steps", "1"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    for stage in ("full", "no aux", "no aux, no difficulty ranks", "no aux, no ranks, null router"):
        row = next(line for line in out.stdout.splitlines() if line.startswith(stage + " "))
        assert float(row.split()[-1]) > 0, row  # the ratio column


def test_telemetry_ab_trainers_train_alike_and_only_a_logs(tmp_path):
    """bench/telemetry_ab.py's premise: the logging trainer and the silent one make the same
    training (telemetry changes no numerics), so their step times differ by the records alone;
    A writes a step record every log_every steps, B none."""
    import json

    import telemetry_ab

    corpus = load_corpus(None)
    a = telemetry_ab.Recording(CFG, corpus, str(tmp_path), 2)
    b = telemetry_ab.Recording(CFG, corpus, None, 10 ** 9)
    for i in range(4):
        a.step(a.batches[i])
        b.step(b.batches[i])
    a.rec.close()
    b.rec.close()
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))
    steps = [r for r in map(json.loads, (tmp_path / "run.jsonl").read_text().splitlines()) if r["event"] == "step"]
    assert [r["step"] for r in steps] == [2, 4]
    assert steps[0]["aux_weighted"]["load_balance"] == CFG.lb_weight * steps[0]["aux"]["load_balance"]
    assert b.rec.path is None
