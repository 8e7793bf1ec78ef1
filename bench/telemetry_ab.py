"""Telemetry's share of training, paired inside the step: two trainers in one process on the same
batches, stepped alternately, one writing step records every `log_every` steps as `moh train` does,
the other never.

    OMP_NUM_THREADS=1 .venv/bin/python bench/telemetry_ab.py [--steps 1000] [--repeat 3] [--threads 1]

Why besides bench_telemetry.py and telemetry_in_place.py: whole runs (telemetry on against off)
spread by several percent from one run to the next, more than the 2 % goal, and the in-place
timing of the record's functions is a floor (it leaves out train()'s inline arguments and what the
record does to the caches of the steps around it). Here A and B are the same default trainer,
bit for bit the same training (telemetry changes no numerics), each with a `Recorder` wired as
`moh/train.py` wires it (`grad_norms()` for the clip, `routing()` per layer and the full `step()`
on logged steps, the bookkeeping `step()` on the others); B's log_every is never reached and it
has no sink, as bench_telemetry's "off". A step pair (A's two steps of one log period against
B's same two) sees the same machine state, so the drift that spreads whole runs hits both.
Overhead = sum(A) / sum(B) - 1 over the paired periods, process CPU time (`--clock wall`: wall
time, what a user waits for at 2 threads, where CPU time also counts the second OpenMP thread
spinning while the record runs on the first), with a 95 % bootstrap interval over the periods;
also the median of the per-period ratios.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _engine import Trainer, load_avg, write_json  # noqa: E402
from moh import heap, schema, threads  # noqa: E402
from moh.config import Config  # noqa: E402
from moh.data import load_corpus  # noqa: E402
from moh.losses import TERMS, WEIGHT_KEYS  # noqa: E402
from moh.monitor import Recorder  # noqa: E402
from moh.optim import clip_divisor  # noqa: E402
from moh.train import _engine_groups, _routing  # noqa: E402

IGNORE = -100


class Recording(Trainer):
    """`Trainer` whose step reports to a Recorder as moh.train's loop does."""

    def __init__(self, cfg: Config, corpus, out_dir: str | None, log_every: int):
        super().__init__(cfg, corpus)
        self.rec = Recorder(out_dir, model=self.model, unit=schema.UNIT_HEAD, n_units=cfg.n_heads,
                            **_routing(cfg), groups=_engine_groups(), log_every=log_every,
                            full=cfg.telemetry_tier == "full", grad_clip=cfg.grad_clip or None,
                            producer=schema.PRODUCER_TRAIN, overwrite=True)
        self.log_every = log_every
        self.aux_weights = {t: getattr(cfg, WEIGHT_KEYS[t]) for t in TERMS}
        self.n = 0

    def step(self, batch=None):
        idx, targets = batch
        cfg, rec = self.cfg, self.rec
        self.n += 1
        logged = self.n % self.log_every == 0
        loss, lm_loss, aux, routings, valid, n_tok, token_loss = self.forward_backward(idx, targets, logged)
        if logged:  # as moh train: before grad_norms(), which then measures the group rows
            rec.force_log()
        norm, _ = rec.grad_norms()
        finite = bool(torch.isfinite(loss) & torch.isfinite(norm))
        divisor = clip_divisor(norm, cfg.grad_clip) if finite else None
        if finite:
            self.opt.step(grad_scale=divisor)
        else:
            rec.force_log()  # as moh train: a skipped step is logged
        if logged or not finite:
            for li, r in enumerate(routings):
                rec.routing(li, selected=r.hard, probs=r.probs, threshold=r.tau, complexity=r.complexity,
                            valid=valid, pred_norm=r.pred_norm)
            rec.step(self.n, loss=loss, lm_loss=lm_loss, lr=cfg.lr, aux=aux, aux_weights=self.aux_weights,
                     grad_norm_clipped=(norm if divisor is None else norm / divisor) if finite else None,
                     tokens=int(n_tok), skipped=not finite, token_loss=token_loss, has_target=targets != IGNORE)
        else:
            rec.step(self.n, loss=loss)
        return loss


def measure(cfg: Config, corpus, periods: int, tmp: str, clock=time.process_time) -> dict:
    a = Recording(cfg, corpus, tmp, cfg.log_every)
    b = Recording(cfg, corpus, None, 10 ** 9)
    with heap.frozen():  # as moh train, once set up
        return _measure(a, b, cfg, periods, clock)


def _measure(a: Recording, b: Recording, cfg: Config, periods: int, clock) -> dict:
    batches = a.batches
    k = cfg.log_every
    for i in range(2 * k):  # warm both (first steps allocate, build the kernels)
        a.step(batches[i % len(batches)])
        b.step(batches[i % len(batches)])
    ta, tb = [], []
    for p in range(periods):  # one log period each, alternating which trainer goes first
        order = ((a, ta), (b, tb)) if p % 2 else ((b, tb), (a, ta))
        for tr, times in order:
            t0 = clock()
            for j in range(k):
                tr.step(batches[(2 * k + p * k + j) % len(batches)])
            times.append(clock() - t0)
    a.rec.close()
    b.rec.close()
    rng = random.Random(0)
    pairs = list(zip(ta, tb))
    boot = sorted(sum(x for x, _ in s) / sum(y for _, y in s) - 1
                  for s in ([rng.choice(pairs) for _ in pairs] for _ in range(2000)))
    return {"overhead": sum(ta) / sum(tb) - 1, "ci95": [boot[50], boot[1949]],
            "median_ratio": statistics.median(x / y - 1 for x, y in pairs),
            "a_ms_per_step": 1e3 * sum(ta) / (k * periods), "b_ms_per_step": 1e3 * sum(tb) / (k * periods)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000, help="steps per trainer per measurement")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--log-every", type=int, default=None, help="instead of the default config's")
    ap.add_argument("--threads", type=int, default=None, help="instead of the default config's (0: automatic)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="process CPU time or wall time")
    a = ap.parse_args(argv)
    cfg = Config()
    if a.log_every is not None:
        cfg = cfg.replace(log_every=a.log_every)
    if a.threads is not None:
        cfg = cfg.replace(threads=a.threads)
    torch.set_num_threads(threads.resolve(cfg.threads))
    corpus = load_corpus(cfg.data)
    periods = a.steps // cfg.log_every
    print(f"load {load_avg()[0]:.2f}, threads {torch.get_num_threads()}, log_every {cfg.log_every}, "
          f"{periods} paired periods of {cfg.log_every} steps, {'process CPU' if a.clock == 'cpu' else 'wall'} time")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.repeat):
            r = measure(cfg, corpus, periods, tmp, time.process_time if a.clock == "cpu" else time.perf_counter)
            results.append(r)
            lo, hi = r["ci95"]
            print(f"A {r['a_ms_per_step']:.2f} ms/step, B {r['b_ms_per_step']:.2f}: telemetry "
                  f"{100 * r['overhead']:.2f} % (95 % interval {100 * lo:.2f} .. {100 * hi:.2f}), "
                  f"median period {100 * r['median_ratio']:.2f} %", flush=True)
    print(f"load {load_avg()[0]:.2f}")
    write_json("telemetry_ab", {"bench": "telemetry_ab", "threads": torch.get_num_threads(), "clock": a.clock,
                                "log_every": cfg.log_every, "periods": periods, "results": results,
                                "command": "bench/telemetry_ab.py " + " ".join(sys.argv[1:])})
    return 0


if __name__ == "__main__":
    sys.exit(main())
