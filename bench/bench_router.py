"""Router cost: training step time of `adaptive` and `moh` against `dense` at the same size.

    .venv/bin/python bench/bench_router.py [--reps 15] [--steps 10] [--warmup 5] [--profile]

One process, default config (embedded corpus, pre-training batches, torch threads = the
config's `threads`). The three models see the same batches in the same order. Each repetition
times `--steps` full training steps (forward, aux losses, backward, grad norms, clip, AdamW) of
each router in turn, the order rotating between repetitions; the ratio to dense is taken per
repetition (paired) and summarised by its median and spread. Goal (issue 7): adaptive <= 1.15x
dense. `--profile` prints the torch.profiler top operators of one adaptive and one dense step.
JSON: bench/results/bench_router.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _engine import Trainer, load_avg, summary, table, write_json  # noqa: E402
from moh import threads  # noqa: E402
from moh.config import Config  # noqa: E402
from moh.data import load_corpus  # noqa: E402

ROUTERS = ("dense", "moh", "adaptive")
GOAL = 1.15


def profile(trainers: dict, steps: int = 10) -> dict[str, str]:
    from torch.profiler import ProfilerActivity, profile as prof

    out = {}
    for name in ("dense", "adaptive"):
        tr = trainers[name]
        with prof(activities=[ProfilerActivity.CPU]) as p:
            for _ in range(steps):
                tr.step()
        out[name] = p.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--steps", type=int, default=10, help="steps per router per repetition")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps per router first")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override (e.g. n_layers=4)")
    a = ap.parse_args(argv)

    from moh.config import parse_override
    base = Config(**dict(parse_override(s) for s in a.set))
    torch.set_num_threads(threads.resolve(base.threads))
    corpus = load_corpus(base.data)
    trainers = {r: Trainer(base.replace(router=r), corpus) for r in ROUTERS}
    load0 = load_avg()
    for tr in trainers.values():
        for _ in range(a.warmup):
            tr.step()

    wall: dict[str, list[float]] = {r: [] for r in ROUTERS}
    cpu: dict[str, list[float]] = {r: [] for r in ROUTERS}
    for rep in range(a.reps):
        order = ROUTERS[rep % 3:] + ROUTERS[:rep % 3]
        for r in order:
            tr = trainers[r]
            t, c = time.perf_counter(), time.process_time()
            for _ in range(a.steps):
                tr.step()
            cpu[r].append((time.process_time() - c) / a.steps)
            wall[r].append((time.perf_counter() - t) / a.steps)
    load1 = load_avg()

    res = {}
    for r in ROUTERS:
        res[r] = {"params": trainers[r].model.num_params()}
        for kind, times in (("cpu", cpu), ("wall", wall)):
            res[r][f"{kind}_step_s"] = summary(times[r])
            res[r][f"{kind}_ratio_to_dense"] = summary([x / d for x, d in zip(times[r], times["dense"])])
    print(f"training step time, {a.reps} reps x {a.steps} steps per router, threads={torch.get_num_threads()}, "
          f"load avg {load0[0]:.2f} -> {load1[0]:.2f}")
    for kind in ("cpu", "wall"):
        rows = []
        for r in ROUTERS:
            s, q = res[r][f"{kind}_step_s"], res[r][f"{kind}_ratio_to_dense"]
            rows.append([r, res[r]["params"], s["median"] * 1e3, s["min"] * 1e3, s["max"] * 1e3,
                         q["median"], q["q1"], q["q3"]])
        print(f"\n{kind} time per step (process CPU time is robust to other jobs on the machine):")
        print(table(["router", "params", "median ms", "min ms", "max ms", "x dense med", "x q1", "x q3"], rows))
    ratio = res["adaptive"]["cpu_ratio_to_dense"]
    ok = ratio["median"] <= GOAL
    lo, hi = ratio["median_ci95"]
    print(f"\ngoal adaptive <= {GOAL}x dense (CPU time, paired median): {'met' if ok else 'NOT met'} "
          f"({ratio['median']:.3f}x, 95% bootstrap interval {lo:.3f}-{hi:.3f}; "
          f"wall {res['adaptive']['wall_ratio_to_dense']['median']:.3f}x)")
    payload = {"config": base.to_dict(), "reps": a.reps, "steps": a.steps, "warmup": a.warmup,
               "loadavg_start": load0, "results": res, "goal": GOAL, "goal_met": ok,
               "command": "bench/bench_router.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if a.profile:
        payload["profile"] = profile(trainers)
        for k, v in payload["profile"].items():
            print(f"\n--- profile: {k} ---\n{v}")
    print(f"wrote {write_json('bench_router', payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
