"""Training throughput of 1 vs N data-parallel processes on this machine (tokens/s, same run).

    .venv/bin/python bench/bench_distributed.py [--reps 3] [--epochs 3] [--nproc 2]

Each repetition runs, interleaved (so a change in the machine's load hits every variant):
  1 process x 1 thread, N processes x 1 thread (torchrun --standalone) [, 1 process x N threads]
on the default model with `pretrain_epochs=--epochs`, no instruction phase and no eval prompts.
Throughput is taken from run.jsonl: target tokens of the step records after the first 5 steps
divided by the time between those records (start-up, imports and evaluation excluded). The
1-minute load average is recorded before each run (`os.getloadavg`). Results:
bench/results/bench_distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tokens_per_s(run_dir: str, skip: int = 5) -> tuple[float, int]:
    steps = [r for r in (json.loads(line) for line in open(os.path.join(run_dir, "run.jsonl")))
             if r["event"] == "step"]
    steps = steps[skip:]
    toks = sum(r["tokens"] for r in steps[1:])
    return toks / (steps[-1]["time"] - steps[0]["time"]), len(steps) + skip


def run(variant: str, nproc: int, threads: int, epochs: int, out: str) -> dict:
    overrides = [f"pretrain_epochs={epochs}", "instruct_epochs=0", "eval_prompts=0", "log_every=1",
                 f"threads={threads}", "device=cpu"]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": str(threads)}
    if nproc == 1:
        cmd = [sys.executable, "-m", "moh.train", "--out", out, *overrides]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "moh.train", "--out", out, *overrides]
    load = os.getloadavg()[0]
    t0 = time.time()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    wall = time.time() - t0
    tps, steps = tokens_per_s(out)
    return {"variant": variant, "nproc": nproc, "threads": threads, "tokens_per_s": tps, "steps": steps,
            "wall_s": wall, "load1_before": load}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--threads-variant", action="store_true", help="also 1 process x N threads")
    a = ap.parse_args()
    n = a.nproc
    variants = [("1 proc x 1 thread", 1, 1), (f"{n} procs x 1 thread", n, 1)]
    if a.threads_variant:  # very slow on a loaded machine (OpenMP threads wait on busy cores)
        variants.insert(1, (f"1 proc x {n} threads", 1, n))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.reps):
            for name, nproc, threads in variants:
                r = run(name, nproc, threads, a.epochs, os.path.join(tmp, f"{rep}-{nproc}-{threads}"))
                r["rep"] = rep
                rows.append(r)
                print(f"rep {rep}  {name:<20} {r['tokens_per_s']:8.0f} tok/s  wall {r['wall_s']:5.1f} s  "
                      f"load {r['load1_before']:.2f}", flush=True)
    summary = {}
    for name, _, _ in variants:
        v = [r["tokens_per_s"] for r in rows if r["variant"] == name]
        summary[name] = {"median_tokens_per_s": statistics.median(v), "min": min(v), "max": max(v)}
        print(f"{name:<20} median {summary[name]['median_tokens_per_s']:8.0f} tok/s  (min {min(v):.0f}, max {max(v):.0f})")
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "bench_distributed.json"), "w") as f:
        json.dump({"cpus": os.cpu_count(), "epochs": a.epochs, "runs": rows, "summary": summary,
                   "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}, f, indent=1)


if __name__ == "__main__":
    main()
