"""Torch threads per phase: the same short `moh train` run at 1 and at N threads, interleaved.

    .venv/bin/python bench/bench_threads.py [--reps 3] [--threads 1 2] [--epochs 8] [--data DIR]

Each repetition runs `moh train --quiet` once per thread count (order alternating), default config
but `--epochs` pre-training and instruction epochs. From each run.jsonl (log_every = 1): per phase,
the wall time per optimizer step (first to last step record of the phase, divided by the steps
between them) and the end-of-phase evaluation's wall time (last step record to the eval record);
per run, the child's CPU seconds (user + sys) and wall seconds. Medians per thread count and the
paired ratio to the first count. Which count is faster decides the automatic `threads` default
(moh/threads.py); on a machine whose cores other jobs keep busy more threads can be slower (OpenMP
threads wait on each other), so the load average is printed and kept in the JSON.
JSON: bench/results/bench_threads.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _engine import load_avg, table, write_json  # noqa: E402
from calibrate import moh_command  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("pretrain", "instruct")


def phase_times(path: Path) -> dict:
    recs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    out = {}
    for ph in PHASES:
        steps = [r for r in recs if r["event"] == "step" and r["phase"] == ph]
        ev = next(r for r in recs if r["event"] == "eval" and r["phase"] == ph)
        out[ph] = {"step_ms": 1e3 * (steps[-1]["time"] - steps[0]["time"]) / (steps[-1]["step"] - steps[0]["step"]),
                   "eval_s": ev["time"] - steps[-1]["time"]}
    return out


def run(threads: int, epochs: int, data: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = moh_command() + ["train", "--quiet", "--out", tmp, "--threads", str(threads), "--log-every", "1",
                               "--set", f"pretrain_epochs={epochs}", "--set", f"instruct_epochs={epochs}"]
        if data:
            cmd += ["--data", data]
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        wall = time.perf_counter() - t
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        return {"threads": threads, "wall_s": wall, "cpu_s": cpu, "load": os.getloadavg()[0],
                **phase_times(Path(tmp) / "run.jsonl")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--data", default=None)
    a = ap.parse_args(argv)
    load0 = load_avg()
    runs: list[dict] = []
    for rep in range(a.reps):
        order = a.threads if rep % 2 == 0 else a.threads[::-1]
        for n in order:
            runs.append({"rep": rep, **run(n, a.epochs, a.data)})
            r = runs[-1]
            print(f"rep {rep} threads {n}: wall {r['wall_s']:.1f} s, cpu {r['cpu_s']:.1f} s, pretrain "
                  f"{r['pretrain']['step_ms']:.1f} ms/step, instruct {r['instruct']['step_ms']:.1f} ms/step "
                  f"(load {r['load']:.1f})", flush=True)
    load1 = load_avg()
    base = a.threads[0]

    def med(n, key):
        return statistics.median(key(r) for r in runs if r["threads"] == n)

    def ratio(n, key):  # paired per repetition against the first thread count
        pairs = [(key(r), key(s)) for r in runs for s in runs
                 if r["threads"] == n and s["threads"] == base and r["rep"] == s["rep"]]
        return statistics.median(x / y for x, y in pairs)

    keys = {"pretrain ms/step": lambda r: r["pretrain"]["step_ms"],
            "instruct ms/step": lambda r: r["instruct"]["step_ms"],
            "pretrain eval s": lambda r: r["pretrain"]["eval_s"],
            "instruct eval s": lambda r: r["instruct"]["eval_s"],
            "whole run wall s": lambda r: r["wall_s"], "whole run CPU s": lambda r: r["cpu_s"]}
    rows = [[k] + [med(n, f) for n in a.threads] + [ratio(n, f) for n in a.threads[1:]] for k, f in keys.items()]
    print(f"\nmedians of {a.reps} interleaved repetitions, {a.epochs} + {a.epochs} epochs, "
          f"load avg {load0[0]:.2f} -> {load1[0]:.2f}")
    print(table(["figure"] + [f"{n} thr" for n in a.threads] + [f"{n}/{base} paired" for n in a.threads[1:]], rows))
    payload = {"runs": runs, "epochs": a.epochs, "data": a.data, "loadavg_start": load0,
               "medians": {k: {n: med(n, f) for n in a.threads} for k, f in keys.items()},
               "command": "bench/bench_threads.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"wrote {write_json('bench_threads', payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
