"""moh.monitor.Recorder overhead on the example model (examples/own_moe.py): training steps with
the recorder watching both MoE layers at log_every = 1 and 10, against the same steps without it.

    .venv/bin/python bench/bench_monitor.py [--reps 7] [--steps 60]

One process, one thread (as the example runs), the same model and batches for every variant
(weights reset from one copy, same seed), variants interleaved within each repetition so a
change in machine load hits them alike. Per repetition, a variant's cost is the process CPU
time of `--steps` training steps (forward, backward, recorder, clip, AdamW); overhead =
(variant - off) / off per repetition, median over repetitions (wall time shown too); and,
measured directly, the share of the CPU time spent inside the recorder's routing() and step()
(thread CPU time, median over repetitions). The recorder
writes a real run.jsonl into a temporary directory.
Goal (issue 12): <= 3 % of step time at log_every = 10. JSON: bench/results/bench_monitor.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import own_moe  # noqa: E402
from moh.data import load_corpus  # noqa: E402
from moh.monitor import Recorder  # noqa: E402


def _batches(n, ctx=32, batch=16):
    text = "\n".join(load_corpus(None).pretrain)
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text])
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        starts = torch.randint(0, len(data) - ctx - 1, (batch,), generator=g)
        x = torch.stack([data[s:s + ctx] for s in starts])
        out.append((x, torch.stack([data[s + 1:s + ctx + 1] for s in starts])))
    return len(chars), out


class TimedRecorder(Recorder):
    """The Recorder with the thread CPU time spent in its own per-forward and per-step calls
    added up: a direct measurement that machine load does not blur as it blurs the A/B difference
    (it leaves out the forward-hook dispatch, a Python call per watched module and forward)."""

    spent = 0.0

    def routing(self, *a, **k):
        t = time.thread_time()
        try:
            return super().routing(*a, **k)
        finally:
            self.spent += time.thread_time() - t

    def step(self, *a, **k):
        t = time.thread_time()
        try:
            return super().step(*a, **k)
        finally:
            self.spent += time.thread_time() - t


def _run(model0, batches, log_every, tmp):
    model = copy.deepcopy(model0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rec = None
    if log_every:
        rec = TimedRecorder(tmp, model=model, unit="expert", top_k=2, log_every=log_every, overwrite=True)
        for i, b in enumerate(model.blocks):
            rec.watch(b.moe, layer=i, extract=lambda module, inputs, output: module.last)
    c0, w0 = time.process_time(), time.perf_counter()
    for step, (x, y) in enumerate(batches, 1):
        lm = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        aux = sum(b.moe.aux for b in model.blocks) / len(model.blocks)
        loss = lm + 0.01 * aux
        opt.zero_grad()
        loss.backward()
        values = loss.item(), lm.item(), aux.item()  # read in every variant: a loop logs them anyway
        if rec is not None:
            rec.step(step, loss=values[0], lm_loss=values[1], lr=3e-3, aux={"load_balance": values[2]})
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    spent = 0.0
    if rec is not None:
        spent = rec.spent
        rec.close()
    return cpu, wall, spent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    vocab, batches = _batches(args.steps)
    model0 = own_moe.LM(vocab, ctx=32)
    variants = {"off": 0, "log_every=1": 1, "log_every=10": 10}
    res = {k: {"cpu": [], "wall": [], "own": []} for k in variants}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        _run(model0, batches[:5], 1, tmp)  # warm-up (allocator, first-call costs)
        for _ in range(args.reps):
            for name, every in variants.items():
                cpu, wall, spent = _run(model0, batches, every, tmp)
                res[name]["cpu"].append(cpu / args.steps)
                res[name]["wall"].append(wall / args.steps)
                res[name]["own"].append(spent / cpu if cpu else 0.0)  # recorder's share of the CPU time
    load.append(os.getloadavg()[0])
    rows = []
    for name in variants:
        cpu, wall = res[name]["cpu"], res[name]["wall"]
        over = [(c - o) / o for c, o in zip(cpu, res["off"]["cpu"])]
        over_w = [(c - o) / o for c, o in zip(wall, res["off"]["wall"])]
        rows.append({"variant": name, "cpu_ms_per_step": 1e3 * statistics.median(cpu),
                     "wall_ms_per_step": 1e3 * statistics.median(wall),
                     "overhead_cpu": statistics.median(over), "overhead_wall": statistics.median(over_w),
                     "overhead_cpu_all": over, "recorder_share": statistics.median(res[name]["own"]),
                     "recorder_share_all": res[name]["own"]})
    print(f"{args.reps} repetitions x {args.steps} steps; load average {load[0]:.2f} before, {load[1]:.2f} after")
    print("| variant | CPU ms/step | wall ms/step | overhead (CPU) | overhead (wall) | recorder's own calls |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['cpu_ms_per_step']:.2f} | {r['wall_ms_per_step']:.2f} | "
              f"{100 * r['overhead_cpu']:+.1f} % | {100 * r['overhead_wall']:+.1f} % | "
              f"{100 * r['recorder_share']:.2f} % |")
    out = ROOT / "bench" / "results" / "bench_monitor.json"
    out.write_text(json.dumps({"reps": args.reps, "steps": args.steps, "load": load, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
