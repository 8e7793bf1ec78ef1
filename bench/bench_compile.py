"""Does `torch.compile` pay for itself inside the default run? Compile time against step time.

    .venv/bin/python bench/bench_compile.py [--steps 40] [--mode default]

Two Trainers (bench/_engine.py: moh.train's step, default config, pre-training batches) in one
process: eager, and the same model with `torch.compile(model)` (inductor, the C++ backend on
CPU). Reported: the time of the compiled model's first step (tracing + code generation + the C++
compiler), the steady-state step of each after that, and the break-even step count
first_step_extra / (eager - compiled), to set against the default run's 780 steps and 15 s
budget. Shape changes (the batches have different lengths) recompile: a second and third
distinct shape are timed as well. JSON: bench/results/bench_compile.json.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _engine import Trainer, load_avg, write_json  # noqa: E402
from moh import threads  # noqa: E402
from moh.config import Config  # noqa: E402


def timed(tr: Trainer, batch) -> float:
    t = time.perf_counter()
    tr.step(batch)
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--mode", default="default", help="torch.compile mode")
    a = ap.parse_args(argv)
    cfg = Config()
    torch.set_num_threads(threads.resolve(cfg.threads))
    load0 = load_avg()
    t_import = time.perf_counter()
    importlib.import_module("torch._dynamo")  # the import itself is part of what compile costs a run
    import_s = time.perf_counter() - t_import
    eager = Trainer(cfg)
    comp = Trainer(cfg)
    comp.model = torch.compile(comp.model, mode=a.mode)
    by_len: dict[int, list] = {}
    for b in eager.batches:
        by_len.setdefault(b[0].shape[1], []).append(b)
    shapes = sorted(by_len, key=lambda n: -len(by_len[n]))[:3]  # the three commonest lengths
    first = {n: timed(comp, by_len[n][0]) for n in shapes}  # each compiles once
    for n in shapes:
        timed(eager, by_len[n][0])
    e_steps, c_steps = [], []
    for i in range(a.steps):
        b = by_len[shapes[i % len(shapes)]][i % len(by_len[shapes[i % len(shapes)]])]
        e_steps.append(timed(eager, b))
        c_steps.append(timed(comp, b))
    e, c = statistics.median(e_steps), statistics.median(c_steps)
    extra = sum(first.values()) - len(shapes) * c
    breakeven = extra / (e - c) if e > c else float("inf")
    distinct = len(by_len)
    print(f"threads={torch.get_num_threads()}, load {load0[0]:.2f} -> {load_avg()[0]:.2f}")
    print(f"torch._dynamo import: {import_s:.2f} s")
    for n in shapes:
        print(f"first compiled step, sequence length {n}: {first[n]:.1f} s")
    print(f"steady step: eager {1e3 * e:.2f} ms, compiled {1e3 * c:.2f} ms (median of {a.steps})")
    print(f"distinct batch lengths in one pre-training epoch: {distinct} (each a recompile unless dynamic)")
    print(f"break-even: {breakeven:.0f} steps for the three shapes' compile time (default run: 780 steps)")
    path = write_json("bench_compile", {
        "mode": a.mode, "dynamo_import_s": import_s, "first_step_s": {str(n): first[n] for n in shapes},
        "eager_step_ms": 1e3 * e, "compiled_step_ms": 1e3 * c, "distinct_lengths": distinct,
        "breakeven_steps": breakeven, "loadavg_start": load0})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
