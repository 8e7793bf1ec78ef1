"""Telemetry's share of a training run, timed in place: the CPU time `train()` spends building
and writing its step records, over the run's CPU time.

    OMP_NUM_THREADS=1 .venv/bin/python bench/telemetry_in_place.py [--epochs 10] [--runs 3]

Why besides bench_telemetry.py: its whole-run comparison (telemetry on against off, paired runs)
spreads by several percent between repetitions, too coarse to tell 1.5 % from 2.5 %
(docs/benchmarks.md, "Eighth session"). Here one run times its own logging: `Recorder.routing`
and the `Recorder.step` calls that write a record (which read the aux terms with the record's
other scalars). What this leaves out: the arguments train() builds inline for the record
(a mask comparison, the clipped norm's division: a few operations), and whatever the record's
work does to the caches of the step after it; so it is a floor, the whole-run figure the
ceiling. Default config, embedded corpus, pre-training only, no exact-match eval, a JSONL sink
as `--out` gives, `process_time` (CPU). Not a goal benchmark by itself.
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

import _engine  # noqa: E402,F401  (puts the repository root on sys.path)
from moh import train as train_module  # noqa: E402
from moh.config import Config  # noqa: E402
from moh.data import load_corpus  # noqa: E402
from moh.monitor import recorder  # noqa: E402
from moh.telemetry import JsonlSink  # noqa: E402


class Clock:
    """CPU seconds spent in the wrapped functions (a record-writing `step` only)."""

    def __init__(self):
        self.seconds, self.records = 0.0, 0

    def wrap(self, fn, *, records_only: bool = False):
        def timed(*args, **kwargs):
            t = time.process_time()
            out = fn(*args, **kwargs)
            if not records_only or out is not None:
                self.seconds += time.process_time() - t
                self.records += out is not None and records_only
            return out
        return timed


def one_run(cfg: Config, corpus, tmp: str) -> tuple[float, float, int, int]:
    clock = Clock()
    saved = recorder.Recorder.routing, recorder.Recorder.step
    recorder.Recorder.routing = clock.wrap(saved[0])
    recorder.Recorder.step = clock.wrap(saved[1], records_only=True)
    try:
        sink = JsonlSink(os.path.join(tmp, "run"), overwrite=True)
        t = time.process_time()
        res = train_module.train(cfg, None, sink=sink, corpus=corpus)
        total = time.process_time() - t
    finally:
        recorder.Recorder.routing, recorder.Recorder.step = saved
    return clock.seconds, total, clock.records, res.steps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10, help="pre-training epochs per run")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args(argv)
    cfg = Config(pretrain_epochs=a.epochs, instruct_epochs=0, eval_prompts=0)
    corpus = load_corpus(cfg.data)
    shares = []
    with tempfile.TemporaryDirectory() as tmp:
        one_run(cfg.replace(pretrain_epochs=1), corpus, tmp)  # warm-up
        for _ in range(a.runs):
            spent, total, records, steps = one_run(cfg, corpus, tmp)
            shares.append(spent / total)
            print(f"{steps} steps, {records} records (log_every {cfg.log_every}), threads "
                  f"{torch.get_num_threads()}: {spent * 1e3 / records:.3f} ms a record, "
                  f"{100 * spent / total:.2f} % of the run's CPU time", flush=True)
    print(f"median {100 * statistics.median(shares):.2f} % of the run's CPU time in the records "
          f"(a floor: see the docstring); load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
