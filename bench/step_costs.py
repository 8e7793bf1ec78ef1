"""Where a training step's time goes, measured inside real steps: each custom autograd node's
forward and backward, each moh/native.c kernel, per step.

    .venv/bin/python bench/step_costs.py [--router adaptive] [--steps 100]

Not a goal benchmark: the decomposition behind docs/benchmarks.md ("Fifth session"). Isolated
timings of a node or an operator understate its cost inside a step several times over (the
(N, V) loss flushes the L2 cache, and everything after it runs cold), so this times them where
they run: forward passes by wrapping the nodes' `forward`, backward passes with autograd hooks on
every node of each step's graph (time from its pre-hook to its hook, summed by node name), and
the kernels by wrapping the loaded library's functions. The hooks and wrappers add ~1 us each, so
the step itself runs a few percent slower than in bench_router.py. Each row: microseconds per step.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import _engine  # noqa: E402
from moh import losses, native, route_fast, threads, token_loss  # noqa: E402
from moh.config import Config  # noqa: E402

NODES = (route_fast._AdaptiveRoute, losses._NativeAux, losses._LayerSums,
         losses._Terms, token_loss._TokenLoss)


class Timed:
    """Wraps the loaded kernels: every call's time, by function name."""

    def __init__(self, lib, acc):
        self._lib, self._acc = lib, acc

    def __getattr__(self, name):
        fn = getattr(self._lib, name)

        def timed(*args):
            t = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self._acc["kernel " + name] += time.perf_counter() - t
        return timed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--router", default="adaptive", choices=("dense", "moh", "adaptive"))
    ap.add_argument("--steps", type=int, default=100)
    a = ap.parse_args(argv)
    cfg = Config(router=a.router)
    torch.set_num_threads(threads.resolve(cfg.threads))
    acc: collections.defaultdict[str, float] = collections.defaultdict(float)
    for node in NODES:  # forward passes
        fwd = node.forward

        def timed_forward(*args, _fwd=fwd, _name=node.__name__):
            t = time.perf_counter()
            try:
                return _fwd(*args)
            finally:
                acc[f"forward {_name}"] += time.perf_counter() - t
        node.forward = staticmethod(timed_forward)
    if native.lib() is not None:
        native._lib = Timed(native.lib(), acc)
    trainer = _engine.Trainer(cfg)
    started: dict = {}
    hooked: set = set()

    def hook_graph(loss: torch.Tensor) -> None:  # backward passes: every node of this step's graph
        stack, seen = [loss.grad_fn], set()
        while stack:
            fn = stack.pop()
            if fn is None or fn in seen:
                continue
            seen.add(fn)
            stack.extend(f for f, _ in fn.next_functions)
            if fn in hooked:  # AccumulateGrad nodes live as long as their parameter
                continue
            hooked.add(fn)
            fn.register_prehook(lambda g, fn=fn: started.__setitem__(fn, time.perf_counter()))
            fn.register_hook(lambda gi, go, fn=fn: acc.__setitem__(
                "backward " + fn.name(), acc["backward " + fn.name()] + time.perf_counter() - started[fn]))

    backward = torch.Tensor.backward

    def timed_backward(self, *args, **kwargs):
        hook_graph(self)
        t = time.perf_counter()
        backward(self, *args, **kwargs)
        acc["backward (whole)"] += time.perf_counter() - t
    torch.Tensor.backward = timed_backward
    for _ in range(10):
        trainer.step()
    acc.clear()
    t = time.perf_counter()
    for _ in range(a.steps):
        trainer.step()
    step_us = (time.perf_counter() - t) / a.steps * 1e6
    print(f"{a.router}: {step_us:.0f} us a step over {a.steps} steps, threads {torch.get_num_threads()}")
    for name, total in sorted(acc.items(), key=lambda kv: -kv[1]):
        print(f"  {name:58s} {total / a.steps * 1e6:9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
