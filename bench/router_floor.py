"""Where the adaptive step's extra time goes: the router's work removed one part at a time.

    .venv/bin/python bench/router_floor.py [--reps 7] [--steps 10]

Not a goal benchmark: a decomposition for docs/benchmarks.md ("Router cost"). The same
interleaved dense / adaptive measurement as bench_router.py (wall ms per full training step,
paired medians), repeated with parts of the adaptive step replaced by nothing:

1. `full`: the engine as it is;
2. `no aux`: aux_objective returns no term (no sums, no terms, nothing in the backward pass);
3. `... no difficulty ranks`: also no rank quantiles of the entropy (the complexity target's);
4. `... null router`: also AdaptiveRouter.forward returns all heads with gates 1 that still
   depend on the projections (so the fused qkv + router matmul, the gate multiply and their
   backward remain, as do the router's parameters in the optimizer and the entropy in the loss).

What is left at 4 is the cost of carrying a router at all in this engine, whatever it computes.
The runs in 2-4 do not train correctly (the router gets no gradient); only their time is read.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _engine  # noqa: E402
from _engine import Trainer, load_avg  # noqa: E402
from moh import losses, model, routing, threads  # noqa: E402
from moh.config import Config  # noqa: E402
from moh.data import load_corpus  # noqa: E402


def _no_aux(routings, valid, cfg, *args, **kwargs):
    return {t: None for t in losses.TERMS}, None


def _no_ranks(signal, has_target):
    return torch.full(has_target.shape, float("nan"))


def _null_router(self, x, proj=None, valid=None):
    B, T, _ = x.shape
    gates = proj[..., : self.n_heads] * 0 + 1  # ones that keep the projections in the graph
    return routing.Routing(hard=torch.ones(B, T, self.n_heads, dtype=torch.bool), gates=gates)


STAGES = [("full", None), ("no aux", (_engine, "aux_objective", _no_aux)),
          ("no aux, no difficulty ranks", (model, "quantiles_at", _no_ranks)),
          ("no aux, no ranks, null router", (routing.AdaptiveRouter, "forward", _null_router))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args(argv)
    base = Config()
    torch.set_num_threads(threads.resolve(base.threads))
    corpus = load_corpus(base.data)
    trainers = {r: Trainer(base.replace(router=r), corpus) for r in ("dense", "adaptive")}
    print(f"load {load_avg()[0]:.2f}, threads {torch.get_num_threads()}")
    print(f"{'stage':34s} {'dense ms':>9s} {'adaptive ms':>12s} {'x dense':>8s}")
    for label, patch in STAGES:
        if patch is not None:
            setattr(*patch)  # cumulative: each stage keeps the previous ones' removals
        for tr in trainers.values():
            for _ in range(3):
                tr.step()
        ratios, ms = [], {r: [] for r in trainers}
        for rep in range(a.reps):
            order = list(trainers) if rep % 2 == 0 else list(trainers)[::-1]
            t = {}
            for r in order:
                t0 = time.perf_counter()
                for _ in range(a.steps):
                    trainers[r].step()
                t[r] = (time.perf_counter() - t0) / a.steps * 1000
                ms[r].append(t[r])
            ratios.append(t["adaptive"] / t["dense"])
        print(f"{label:34s} {statistics.median(ms['dense']):9.2f} {statistics.median(ms['adaptive']):12.2f} "
              f"{statistics.median(ratios):8.3f}")
    print(f"load {load_avg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
