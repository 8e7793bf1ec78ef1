"""Step cost of the difficulty target (issue 18): the same training step with
complexity_target = "heads" and = "entropy_rank", interleaved, on both corpora.

Usage: python bench/bench_difficulty_cost.py [--reps 5] [--steps 10]

Prints the median seconds per step of each (reps blocks of `steps` steps, interleaved so that a
change of machine load hits both alike) and the load average; --threads 1 as the A/B runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

from _engine import Trainer  # noqa: E402
from moh.config import Config  # noqa: E402

REFERENCE = str(ROOT.parent / "shared" / "rustgpt" / "data")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    torch.set_num_threads(1)
    for name, data in (("embedded", None), ("reference", REFERENCE)):
        trainers = {t: Trainer(Config(complexity_target=t, threads=1, data=data)) for t in ("heads", "entropy_rank")}
        times: dict[str, list[float]] = {t: [] for t in trainers}
        for _ in range(a.reps):
            for t, tr in trainers.items():
                t0 = time.perf_counter()
                for _ in range(a.steps):
                    tr.step()
                times[t].append((time.perf_counter() - t0) / a.steps)
        med = {t: statistics.median(v) for t, v in times.items()}
        print(f"{name}: heads {1000 * med['heads']:.1f} ms/step, entropy_rank {1000 * med['entropy_rank']:.1f} "
              f"ms/step ({100 * (med['entropy_rank'] / med['heads'] - 1):+.1f}%), load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
