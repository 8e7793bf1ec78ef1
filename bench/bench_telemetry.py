"""Telemetry overhead: the training loop with the default logging interval against telemetry off.

    .venv/bin/python bench/bench_telemetry.py [--reps 5] [--epochs 2]

Whole runs of `moh.train.train` (default config, embedded corpus, pre-training only, no
exact-match eval, no files but the run log),
interleaved in one process, same seed, so every variant does exactly the same training work:
  off      no sink and log_every = 10**9 (only each phase's last step record is built): the
           null sink;
  default  run.jsonl (JsonlSink, as for --out) written and flushed every log_every = 2 steps;
  full     the same with telemetry_tier = "full" (+ per-layer heads_hist and prob_mean).
Every logged step also measures the loss alignment (moh/alignment.py).
Overhead = (variant - off) / off, on process CPU time (robust to other jobs; wall time shown
too), median over repetitions of the paired differences. A second table times the logging
work of one step record alone (layer stats, host sync, JSON encode + write) with a Trainer.
Goal (issue 7): default <= 2 % of step time. JSON: bench/results/bench_telemetry.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _engine import Trainer, load_avg, summary, table, write_json  # noqa: E402
from moh import schema  # noqa: E402
from moh.alignment import loss_alignment  # noqa: E402
from moh.config import Config  # noqa: E402
from moh.data import load_corpus  # noqa: E402
from moh.model import IGNORE_INDEX  # noqa: E402
from moh.routing import layer_stats  # noqa: E402
from moh.telemetry import JsonlSink  # noqa: E402
from moh.monitor.rows import layer_rows as _rows  # noqa: E402
from moh.train import train  # noqa: E402

GOAL = 0.02
VARIANTS = ("off", "default", "full")


def run_once(cfg: Config, variant: str, corpus, tmp: str) -> tuple[float, float, int]:
    # No out_dir in any variant (no checkpoint/model files); the run log is the sink train()
    # itself would open for out_dir (JsonlSink), so only telemetry differs between variants.
    t, c = time.perf_counter(), time.process_time()
    if variant == "off":
        res = train(cfg.replace(log_every=10**9), None, corpus=corpus)
    else:
        sink = JsonlSink(os.path.join(tmp, variant), overwrite=True)
        res = train(cfg.replace(telemetry_tier="full" if variant == "full" else "basic"), None,
                    sink=sink, corpus=corpus)
    return time.process_time() - c, time.perf_counter() - t, res.steps


def record_cost(cfg: Config, corpus, tmp: str, n: int = 60) -> dict[str, float]:
    """CPU seconds to build + write one step record, per tier (model after a few steps).

    Each record includes the loss alignment (moh/alignment.py: rank correlations of the
    layers' complexity and head counts with the token losses), as train() logs it; the
    `token_losses` entry is the one extra op on a logged step's forward pass (the
    cross-entropy without reduction over the step's logits), timed alone."""
    tr = Trainer(cfg, corpus)
    for _ in range(5):
        tr.step()
    loss, routings, valid = tr.last
    idx, targets = tr.last_batch
    has_target = targets != IGNORE_INDEX
    with torch.no_grad():
        token_loss, _, _ = tr.model(idx, targets, token_losses=True)
        x, _ = tr.model.features(idx)
        logits = tr.model.lm_head(x[has_target]).float()
    sink = JsonlSink(os.path.join(tmp, "rec"), overwrite=True)
    out = {}
    for tier in ("basic", "full"):
        c = time.process_time()
        for i in range(n):
            stats = [layer_stats(r, valid, full=tier == "full") for r in routings]
            corr = loss_alignment(routings, has_target, token_loss)
            rec = {"event": schema.STEP, "step": i, "epoch": 0, "phase": "pretrain", "time": time.time(),
                   "loss": float(loss.detach()), "lm_loss": float(loss.detach()), "lr": 1e-3, "grad_norm": 1.0,
                   "grad_norm_clipped": 1.0, "grad_norms": {}, "aux": {},
                   "layers": _rows([s | a for s, a in zip(stats, corr)])}
            sink.write(rec)
        out[tier] = (time.process_time() - c) / n
    sink.close()
    c = time.process_time()
    for _ in range(n):
        F.cross_entropy(logits, targets[has_target], reduction="none")
    out["token_losses"] = (time.process_time() - c) / n
    c = time.process_time()
    for _ in range(n):
        loss_alignment(routings, has_target, token_loss)
    out["alignment"] = (time.process_time() - c) / n
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=3, help="pre-training epochs per run")
    a = ap.parse_args(argv)

    cfg = Config(pretrain_epochs=a.epochs, instruct_epochs=0, eval_prompts=0)
    corpus = load_corpus(cfg.data)
    load0 = load_avg()
    cpu = {v: [] for v in VARIANTS}
    wall = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        run_once(cfg.replace(pretrain_epochs=1), "default", corpus, tmp)  # warm-up
        steps = 0
        for rep in range(a.reps):
            order = VARIANTS[rep % 3:] + VARIANTS[:rep % 3]
            for v in order:
                c, w, steps = run_once(cfg, v, corpus, tmp)
                cpu[v].append(c)
                wall[v].append(w)
        per_record = record_cost(cfg, corpus, tmp)
    load1 = load_avg()

    res = {}
    rows = []
    for v in VARIANTS:
        oc = [x / o - 1 for x, o in zip(cpu[v], cpu["off"])]
        ow = [x / o - 1 for x, o in zip(wall[v], wall["off"])]
        res[v] = {"cpu_s": summary(cpu[v]), "wall_s": summary(wall[v]),
                  "cpu_overhead": summary(oc), "wall_overhead": summary(ow)}
        rows.append([v, statistics.median(cpu[v]), statistics.median(cpu[v]) / steps * 1e3,
                     100 * statistics.median(oc), 100 * min(oc), 100 * max(oc),
                     statistics.median(wall[v]), 100 * statistics.median(ow)])
    print(f"whole runs: {steps} optimizer steps each, {a.reps} reps interleaved, log_every={cfg.log_every}, "
          f"threads={torch.get_num_threads()}, load avg {load0[0]:.2f} -> {load1[0]:.2f}")
    print(table(["telemetry", "cpu s/run", "cpu ms/step", "overhead % (med)", "min %", "max %",
                 "wall s/run", "wall overhead %"], rows))
    step_cpu = statistics.median(cpu["off"]) / steps
    rec_rows = [[tier, t * 1e3, 100 * t / cfg.log_every / step_cpu] for tier, t in per_record.items()]
    print("\none step record alone (layer stats + loss alignment + sync + encode + write/flush), CPU;"
          "\ntoken_losses: the logged step's extra cross-entropy; alignment: the rank correlations alone:")
    print(table(["tier", "ms/record", f"% of step time at log_every={cfg.log_every}"], rec_rows))
    ok = res["default"]["cpu_overhead"]["median"] <= GOAL
    print(f"\ngoal default telemetry <= {GOAL:.0%} of step time: {'met' if ok else 'NOT met'} "
          f"(whole-run {100 * res['default']['cpu_overhead']['median']:.2f} %, "
          f"per-record estimate {rec_rows[0][2] + rec_rows[2][2]:.2f} %: basic record + token losses)")
    payload = {"config": cfg.to_dict(), "reps": a.reps, "steps_per_run": steps, "loadavg_start": load0,
               "results": res, "record_cpu_s": per_record, "step_cpu_s_off": step_cpu,
               "record_share_of_step": {r[0]: r[2] / 100 for r in rec_rows}, "goal": GOAL, "goal_met": ok,
               "command": "bench/bench_telemetry.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"wrote {write_json('bench_telemetry', payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
