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
Overhead = (variant - off) / off, on process CPU time and on wall time, median over
repetitions of the paired differences. The goal is judged on CPU time with one thread (robust to
other jobs) and on wall time with more (run it on a quiet machine): with 2 threads the record's
small operators run on the main thread while OpenMP's other thread spin-waits, so the process
CPU time counts them about twice though the run is no longer. A second table times the logging
work of one step record alone (layer stats, host sync, JSON encode + write) with a Trainer:
`recorder` rows as train() makes it (Recorder.routing per layer + Recorder.step, which takes the
stacked all-layers path of moh/monitor/stacked.py), `basic` / `full` rows with the per-layer
reference functions (routing.layer_stats, alignment.loss_alignment, monitor.rows.layer_rows).
Not included: `moh train`'s early-alert checks (analyze/live/early.py, capped at 1% of the run).
Goal (issue 7): default <= 2 % of step time. JSON: bench/results/bench_telemetry.json.
The whole-run medians spread by several percent between runs of the same code, and the record
timed alone here is warm and leaves out the aux terms and group norms: bench/telemetry_in_place.py
times the records inside real runs (docs/benchmarks.md, "Eighth session")."""

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

from _engine import Trainer, load_avg, summary, table, write_json  # noqa: E402
from moh import schema  # noqa: E402
from moh.alignment import loss_alignment  # noqa: E402
from moh.config import Config  # noqa: E402
from moh.data import load_corpus  # noqa: E402
from moh.model import IGNORE_INDEX  # noqa: E402
from moh.routing import layer_stats  # noqa: E402
from moh.telemetry import JsonlSink  # noqa: E402
from moh.monitor import Recorder  # noqa: E402
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
    layers' complexity and head counts with the token losses), as train() logs it. The token
    losses themselves cost nothing extra: they are the tensor whose sum is the LM loss
    (moh/token_loss.py)."""
    tr = Trainer(cfg, corpus)
    for _ in range(5):
        tr.step()
    loss, routings, valid = tr.last
    idx, targets = tr.last_batch
    has_target = targets != IGNORE_INDEX
    with torch.no_grad():
        token_loss, _, _ = tr.model(idx, targets, token_losses=True)
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
        loss_alignment(routings, has_target, token_loss)
    out["alignment"] = (time.process_time() - c) / n
    for tier in ("basic", "full"):
        out["recorder" + (" full" if tier == "full" else "")] = recorder_cost(
            cfg, routings, valid, loss, token_loss, has_target, tmp, n, full=tier == "full")
    return out


def recorder_cost(cfg: Config, routings, valid, loss, token_loss, has_target, tmp: str, n: int,
                  full: bool = False) -> float:
    """CPU seconds of one logged step through `moh.monitor.Recorder` as train() drives it:
    routing() per layer + step() (stats, alignment, one sync, encode, write/flush). No model:
    the gradient norms are the training step's own (train() calls grad_norms() every step)."""
    aux = {t: None for t in schema.AUX_TERMS}
    with Recorder(os.path.join(tmp, "recorder"), n_units=cfg.n_heads, log_every=1, overwrite=True,
                  full=full) as rec:
        c = time.process_time()
        for i in range(n):
            for li, r in enumerate(routings):
                rec.routing(li, selected=r.hard, probs=r.probs, threshold=r.tau, complexity=r.complexity,
                            valid=valid, pred_norm=r.pred_norm)
            rec.step(i + 1, loss=loss, lm_loss=loss, lr=1e-3, aux=aux, aux_weighted=aux, tokens=1,
                     skipped=False, token_loss=token_loss, has_target=has_target)
        return (time.process_time() - c) / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=3, help="pre-training epochs per run")
    ap.add_argument("--records-only", type=int, metavar="N", default=0,
                    help="only time N step records (no whole runs, no JSON): one line, e.g. to "
                         "alternate two trees on PYTHONPATH")
    a = ap.parse_args(argv)

    cfg = Config(pretrain_epochs=a.epochs, instruct_epochs=0, eval_prompts=0)
    corpus = load_corpus(cfg.data)
    load0 = load_avg()
    if a.records_only:
        with tempfile.TemporaryDirectory() as tmp:
            rec = record_cost(cfg, corpus, tmp, n=a.records_only)
        print(f"threads={torch.get_num_threads()} load {load0[0]:.2f} ms/record: "
              + " ".join(f"{k}={v * 1e3:.3f}" for k, v in rec.items()))
        return 0
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
          "\nalignment: the rank correlations alone (part of each tier's record);"
          "\nrecorder: the record as train() makes it (Recorder.routing per layer + Recorder.step;"
          "\nbasic and full are the per-layer reference functions):")
    print(table(["tier", "ms/record", f"% of step time at log_every={cfg.log_every}"], rec_rows))
    share = {r[0]: r[2] for r in rec_rows}
    basis = "cpu_overhead" if torch.get_num_threads() == 1 else "wall_overhead"
    ok = res["default"][basis]["median"] <= GOAL
    print(f"\ngoal default telemetry <= {GOAL:.0%} of step time: {'met' if ok else 'NOT met'} "
          f"(whole-run {100 * res['default'][basis]['median']:.2f} % {basis.split('_')[0]} time, "
          f"per-record estimate {share['recorder']:.2f} %: the basic record through the Recorder)")
    payload = {"config": cfg.to_dict(), "reps": a.reps, "steps_per_run": steps, "loadavg_start": load0,
               "results": res, "record_cpu_s": per_record, "step_cpu_s_off": step_cpu,
               "record_share_of_step": {r[0]: r[2] / 100 for r in rec_rows}, "goal": GOAL, "goal_met": ok,
               "goal_basis": basis,
               "command": "bench/bench_telemetry.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"wrote {write_json('bench_telemetry', payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
