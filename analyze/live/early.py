"""The rules that can decide on part of a run, and the training monitor that runs them.

A rule belongs here when a partial log is already enough evidence: a routing gradient that is
zero, a non-finite value, a gradient blow-up, heads collapsed to one end of their range, a
learned statistic (a threshold) pinned to one value. Rules about where a run ends up (loss
convergence, final head load, criteria) wait for the end. The rule functions are the report's
own (`analyze/rules/`): an alert and the later report's finding are the same judgement.

`EarlyAlerts` is the monitor `moh.train.train(monitor=...)` accepts (moh.telemetry.Monitor):
the engine hands it every record it writes and asks it after each logged step for new alerts.
It lives here, not in moh/, because moh/ never imports analyze/ and the rules need pandas;
cli.py (which imports both) passes it in. See docs/architecture.md.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from moh import schema

from ..load import load_bytes
from ..rules import RULES, Finding
from ..rules.context import Context
from .records import read_records

EARLY_RULES = ("router_grad_zero", "nonfinite", "grad_explosion", "head_collapse", "constant_stat")
_SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2}


def early_findings(run) -> list[Finding]:
    """Findings of the early rules on a (possibly partial) `Run`, errors first."""
    ctx = Context(run)
    out = [f for r in RULES if r.__name__ in EARLY_RULES for f in r(ctx)]
    return sorted(out, key=lambda f: (-_SEVERITY_RANK[f.severity], f.code, -1 if f.layer is None else f.layer))


class EarlyAlerts:
    """Runs the early rules every `every` logged steps on the records seen so far; `check`
    returns each (level, code, message) the first time it fires, and again if its severity
    rises. Info findings are not alerts. Codes the engine already alerted (nonfinite) are not
    repeated."""

    def __init__(self, every: int = 10, path: str | os.PathLike = "run.jsonl",
                 earlier: str | os.PathLike | None = None, max_share: float = 0.01):
        """`earlier`: the log a resumed run appends to, read now (before the run appends): its
        records are evidence too, and what they already show is not alerted again.
        `max_share`: a check is skipped while the training time since the last one is short
        enough that the checks would take more than this share of the run (each check re-reads
        every record, so on a long run they get dearer; 1.0: never skip). 1%: at 5% the checks
        took 4.3% of a 180-step `moh train` run (0.15 s of 3.5 s, cProfile), as much as writing
        the telemetry itself. The price: after a check that took t seconds the next waits 99 t."""
        if every < 1:
            raise ValueError(f"every must be at least 1, not {every}")
        if not 0 < max_share <= 1:
            raise ValueError(f"max_share must be in (0, 1], not {max_share}")
        self.every, self.path, self.max_share = every, Path(path), max_share
        self._next_at = 0.0  # monotonic time before which a check is skipped
        self.text = bytearray()  # the records as log lines: the loader's bulk path reads them back
        self.n_steps = 0
        self._checked_at = 0
        self._fired: dict[tuple[str, int | None], int] = {}
        if earlier is not None and Path(earlier).exists():
            for rec in read_records(Path(earlier).read_bytes().split(b"\n")):
                self.write(rec)
            self._checked_at = self.n_steps
            if self.n_steps:
                for f in early_findings(load_bytes(self.text, self.path)):
                    key = (f.code, f.layer)
                    self._fired[key] = max(self._fired.get(key, -1), _SEVERITY_RANK[f.severity])

    def write(self, record: dict) -> None:
        self.text += schema.encode_record(record).encode("utf-8") + b"\n"
        kind = record.get("event")
        if kind == schema.STEP:
            self.n_steps += 1
        elif kind == schema.ALERT:  # the engine's own alert (or ours, fed back): not again
            key = (record.get("code"), None)
            self._fired[key] = max(self._fired.get(key, 0), _SEVERITY_RANK.get(record.get("level"), 0))

    def close(self) -> None:
        pass

    def check(self, step: int) -> list[tuple[str, str, str]]:
        if self.n_steps - self._checked_at < self.every or time.monotonic() < self._next_at:
            return []
        self._checked_at = self.n_steps
        began = time.monotonic()
        try:
            return self._check()
        finally:
            done = time.monotonic()
            self._next_at = done + (done - began) * (1 / self.max_share - 1)

    def _check(self) -> list[tuple[str, str, str]]:
        new = []
        for f in early_findings(load_bytes(self.text, self.path)):
            rank = _SEVERITY_RANK[f.severity]
            key = (f.code, f.layer)
            if rank < _SEVERITY_RANK["warning"] or rank <= self._fired.get(key, -1):
                continue
            self._fired[key] = rank
            new.append((f.severity, f.code, f.message))  # a layer's message names its layer
        return new
