"""Scaling: training step time and peak memory against sequence length, heads and layers.

    .venv/bin/python bench/bench_scaling.py [--steps 5] [--routers adaptive,dense]

Each point runs in a fresh subprocess (so peak RSS is its own): default config with one knob
changed, a full batch of `batch_size` random sequences of exactly T tokens (no padding), two
warm-up steps, then `--steps` timed training steps (forward, aux, backward, clip, AdamW).
Step time is process CPU time per step (robust to other jobs on the machine); peak memory is
the growth of the process's peak RSS over the steps above its RSS after the model and the
batch were built. JSON: bench/results/bench_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

POINTS = ([("max_len", t) for t in (32, 64, 128, 256)]
          + [("n_heads", h) for h in (4, 8, 16)]
          + [("n_layers", n) for n in (1, 2, 4)])


def child(knob: str, value: int, router: str, steps: int) -> dict:
    import torch

    from _engine import Trainer
    from moh.config import Config
    from moh.data import load_corpus

    cfg = Config(router=router, **{knob: value})
    if knob == "n_heads":
        cfg = cfg.replace(target_heads=min(cfg.target_heads, value), moh_shared=min(2, value - 1),
                          moh_topk=min(2, value - min(2, value - 1)))
    torch.set_num_threads(cfg.threads or 1)
    tr = Trainer(cfg, load_corpus(None))
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(1, tr.tok.vocab_size, (cfg.batch_size, cfg.max_len), generator=g)
    targets = idx.roll(-1, 1)
    targets[:, -1] = -100
    batch = (idx, targets)
    rss0 = _rss_kb()
    for _ in range(2):
        tr.step(batch)
    c, w = time.process_time(), time.perf_counter()
    for _ in range(steps):
        tr.step(batch)
    cpu = (time.process_time() - c) / steps
    wall = (time.perf_counter() - w) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"knob": knob, "value": value, "router": router, "cpu_step_s": cpu, "wall_step_s": wall,
            "peak_rss_mb": peak / 1024, "step_peak_mb": max(0, peak - rss0) / 1024,
            "params": tr.model.num_params(), "tokens": cfg.batch_size * cfg.max_len}


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--routers", default="adaptive,dense")
    ap.add_argument("--child", nargs=3, metavar=("KNOB", "VALUE", "ROUTER"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child[0], int(a.child[1]), a.child[2], a.steps)))
        return 0

    from _engine import load_avg, table, write_json

    load0 = load_avg()
    results = []
    for knob, value in POINTS:
        for router in a.routers.split(","):
            out = subprocess.run([sys.executable, __file__, "--steps", str(a.steps), "--child", knob, str(value),
                                  router], capture_output=True, text=True, check=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            r = results[-1]
            print(f"  {knob}={value} {router}: {r['cpu_step_s'] * 1e3:.1f} ms/step, "
                  f"+{r['step_peak_mb']:.0f} MB", flush=True)
    load1 = load_avg()
    routers = a.routers.split(",")
    rows = []
    for knob, value in POINTS:
        row = [f"{knob}={value}"]
        for router in routers:
            r = next(x for x in results if x["knob"] == knob and x["value"] == value and x["router"] == router)
            row += [r["cpu_step_s"] * 1e3, r["step_peak_mb"]]
        if len(routers) > 1:
            r0 = next(x for x in results if x["knob"] == knob and x["value"] == value and x["router"] == routers[0])
            r1 = next(x for x in results if x["knob"] == knob and x["value"] == value and x["router"] == routers[1])
            row.append(r0["cpu_step_s"] / r1["cpu_step_s"])
        rows.append(row)
    headers = ["point (rest default)"]
    for router in routers:
        headers += [f"{router} ms/step", f"{router} step MB"]
    if len(routers) > 1:
        headers.append(f"{routers[0]}/{routers[1]}")
    print(f"\nbatch 32 x T tokens, process CPU ms per training step, peak RSS growth during the steps; "
          f"load avg {load0[0]:.2f} -> {load1[0]:.2f}")
    print(table(headers, rows))
    payload = {"steps": a.steps, "loadavg_start": load0, "results": results,
               "command": "bench/bench_scaling.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"wrote {write_json('bench_scaling', payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
