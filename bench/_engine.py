"""Shared helpers for the training-engine benchmarks (bench_router, bench_telemetry, ...).

`Trainer` builds the model, optimizer and batches the way `moh.train` does and runs the very
same step (forward, aux losses, backward, grad norms, clip, AdamW) so that a step can be
timed in isolation and several routers can be interleaved in one process.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from typing import Mapping, NamedTuple
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from moh.config import Config  # noqa: E402
from moh.data import load_corpus, make_batches  # noqa: E402
from moh.losses import aux_objective  # noqa: E402
from moh.model import LM  # noqa: E402
from moh.optim import GradNorms, clip_divisor, make_optimizer, named_groups  # noqa: E402
from moh.tokenizer import Tokenizer  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def load_avg() -> tuple[float, float, float]:
    return os.getloadavg()


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def summary(xs: list[float]) -> dict:
    xs = sorted(xs)
    lo, hi = median_interval(xs)
    return {"median": statistics.median(xs), "min": xs[0], "max": xs[-1], "n": len(xs),
            "q1": xs[len(xs) // 4], "q3": xs[(3 * len(xs)) // 4], "median_ci95": [lo, hi]}


def median_interval(xs: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap interval of the median of xs (percentile method, a fixed seed so a JSON
    file can be reproduced from its samples): how far a repeated benchmark's median may move.
    At 21 repetitions of bench_router the adaptive / dense ratio's interval is ~0.05 wide, as
    wide as many of the changes it is used to judge (docs/benchmarks.md)."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(resamples))
    return meds[int(0.025 * resamples)], meds[int(0.975 * resamples) - 1]


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"bench": name, "machine": machine(), "loadavg_end": load_avg(),
               "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(c.rjust(widths[i]) if i else c.ljust(widths[i]) for i, c in enumerate(r)))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(c) -> str:
    if isinstance(c, float):
        return f"{c:.4g}" if abs(c) < 1e4 else f"{c:.0f}"
    return str(c)


class Pass(NamedTuple):
    """What one forward and backward pass of `Trainer.forward_backward` made."""
    loss: torch.Tensor
    lm_loss: torch.Tensor
    aux: Mapping
    routings: list
    valid: torch.Tensor
    n_tok: torch.Tensor
    token_loss: torch.Tensor | None


class Trainer:
    """One model + optimizer + a fixed list of batches; `step()` is moh.train's step."""

    def __init__(self, cfg: Config, corpus=None, *, phase: str = "pretrain", seed_batches: int = 0):
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.cfg = cfg
        corpus = corpus if corpus is not None else load_corpus(cfg.data)
        self.tok = Tokenizer.fit(corpus.texts())
        texts = corpus.pretrain if phase == "pretrain" else corpus.instruct
        seqs = [self.tok.encode(t) for t in texts]
        bsz = cfg.batch_size if phase == "pretrain" else cfg.instruct_batch_size
        self.batches = make_batches(seqs, bsz, seed=cfg.seed, epoch=seed_batches,
                                    pad_id=self.tok.pad_id, max_len=cfg.max_len)
        self.model = LM(cfg, self.tok.vocab_size)
        self.model.train()
        self.opt = make_optimizer(self.model, cfg, cfg.lr)
        self.groups = named_groups(self.model)
        self.grad_norms = GradNorms(self.groups)
        self.params = list(self.model.parameters())
        self.i = 0
        self.last = None
        self.last_batch = None

    def forward_backward(self, idx: torch.Tensor, targets: torch.Tensor, token_losses: bool = False) -> "Pass":
        """moh.train's forward pass, losses and backward for one batch (gradients zeroed first)."""
        valid = idx != self.tok.pad_id
        token_loss, loss_sum, routings = self.model(idx, targets, token_losses=token_losses, valid=valid)
        n_tok = (targets != -100).sum()
        lm_loss = loss_sum / n_tok
        aux, aux_total = aux_objective(routings, valid, self.cfg)
        loss = lm_loss if aux_total is None else lm_loss + aux_total
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        return Pass(loss, lm_loss, aux, routings, valid, n_tok, token_loss)

    def step(self, batch=None):
        if batch is None:
            batch = self.batches[self.i % len(self.batches)]
            self.i += 1
        idx, targets = batch
        cfg = self.cfg
        f = self.forward_backward(idx, targets)
        loss, routings, valid = f.loss, f.routings, f.valid
        norm, per_group = self.grad_norms()
        finite = bool(torch.isfinite(loss) & torch.isfinite(norm))
        if finite:
            self.opt.step(grad_scale=clip_divisor(norm, cfg.grad_clip))
        self.last = (loss, routings, valid)
        self.last_batch = (idx, targets)
        return loss
