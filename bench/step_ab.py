"""A/B of one part of the training step, inside the step: two Trainers in one process, steps
interleaved, the median of the paired differences.

    .venv/bin/python bench/step_ab.py VARIANT [VARIANT ...] [--steps 300] [--repeat 2]

Not a goal benchmark: the instrument behind docs/benchmarks.md's "in-step A/B" figures (sixth
session). bench_router.py's ratio moves by ~0.015 between runs of the same build (dense's own
speed drifts), as much as many single changes; here A and B are the same default adaptive
trainer, stepped alternately on the same batches, B with one part changed, so a drift of the
machine hits both. Each VARIANT (B):

  dense           the dense router (A - B: the router's whole cost)
  per-token-aux   the forward pass without the real-token mask: the aux objective's per-token
                  path instead of the router node's own sums (Routing.sums)
  no-aux          no aux objective (no sums, terms, nor their backward; trains wrongly)
  no-gates        the attention does not multiply by the gates (the router still routes)
  no-ranks        a constant difficulty instead of the entropy rank quantiles
  no-entropy      the loss without the difficulty entropy (a zero one in its place)

The ablations (no-*) do not train correctly; only their time is read. Prints, per variant and
repeat, A's and B's median step (ms), and the paired median A - B (µs: what B saves) with its 95 %
bootstrap interval.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _engine  # noqa: E402
from _engine import Trainer, load_avg, median_interval  # noqa: E402
from moh import losses, model, routing, threads  # noqa: E402
from moh.config import Config  # noqa: E402
from moh.data import load_corpus  # noqa: E402


@contextlib.contextmanager
def _patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def _without_mask(forward):
    def call(idx, targets=None, **kw):
        return forward(idx, targets, **{**kw, "valid": None})
    return call


def _no_aux(routings, valid, cfg, *args, **kwargs):
    return {t: None for t in losses.TERMS}, None


_route = routing.AdaptiveRouter.forward


def _no_gates(self, x, proj=None, valid=None):
    r = _route(self, x, proj, valid)
    r.gates = None
    return r


_token_loss = model.token_loss


def _no_entropy(logits, targets, with_entropy=False):
    loss, _ = _token_loss(logits, targets, with_entropy=False)
    return loss, (torch.zeros_like(loss) if with_entropy else None)


def _variant(name: str, base: Config, corpus) -> tuple[Trainer, Callable[[], contextlib.AbstractContextManager]]:
    """B's trainer and what makes the context each of its steps runs in."""
    if name == "dense":
        return Trainer(base.replace(router="dense"), corpus), contextlib.nullcontext
    tr = Trainer(base, corpus)
    if name == "per-token-aux":
        tr.model.forward = _without_mask(tr.model.forward)
        return tr, contextlib.nullcontext
    patches = {"no-aux": (_engine, "aux_objective", _no_aux),
               "no-gates": (routing.AdaptiveRouter, "forward", _no_gates),
               "no-ranks": (model, "quantiles_at", lambda signal, has: torch.full(has.shape, 0.5)),
               "no-entropy": (model, "token_loss", _no_entropy)}
    return tr, lambda: _patched(*patches[name])


VARIANTS = ("dense", "per-token-aux", "no-aux", "no-gates", "no-ranks", "no-entropy")


def measure(name: str, base: Config, corpus, steps: int) -> dict:
    a = Trainer(base, corpus)
    b, context = _variant(name, base, corpus)
    for _ in range(5):  # warm both (first steps allocate, build the kernels)
        a.step()
        with context():
            b.step()
    ta, tb = [], []
    for i in range(steps):  # alternate which goes first
        for tr, times, ctx in ((a, ta, contextlib.nullcontext), (b, tb, context))[:: 1 if i % 2 else -1]:
            with ctx():
                t0 = time.perf_counter()
                tr.step()
                times.append(time.perf_counter() - t0)
    saved = [x - y for x, y in zip(ta, tb)]
    lo, hi = median_interval(saved)
    return {"a_ms": statistics.median(ta) * 1e3, "b_ms": statistics.median(tb) * 1e3,
            "saved_us": statistics.median(saved) * 1e6, "saved_ci95_us": [lo * 1e6, hi * 1e6]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="+", choices=VARIANTS, metavar="VARIANT")
    ap.add_argument("--steps", type=int, default=300, help="paired steps per measurement")
    ap.add_argument("--repeat", type=int, default=2, help="measurements per variant")
    a = ap.parse_args(argv)
    base = Config()
    torch.set_num_threads(threads.resolve(base.threads))
    corpus = load_corpus(base.data)
    print(f"load {load_avg()[0]:.2f}, threads {torch.get_num_threads()}, {a.steps} paired steps")
    print(f"{'variant (B)':16s} {'A ms':>7s} {'B ms':>7s} {'A - B us':>9s}  95% interval")
    for name in a.variants:
        for _ in range(a.repeat):
            r = measure(name, base, corpus, a.steps)
            lo, hi = r["saved_ci95_us"]
            print(f"{name:16s} {r['a_ms']:7.2f} {r['b_ms']:7.2f} {r['saved_us']:9.0f}  {lo:.0f} .. {hi:.0f}", flush=True)
    print(f"load {load_avg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
