"""`LiveRun`: what `moh watch` knows about one run, brought up to date from the new lines alone.

Each `update` reads only the bytes added since the last (`follow.Follower`), folds the new
records into a small summary (phase, epoch, step, the latest step's numbers, short series for
sparklines) and keeps the lines' text for the rules (the loader's bulk path reads it back far
faster, and in a tenth of the memory, than a list of record dicts). The early rules (`early.py`) run again on
what has arrived when new steps came, at most once per `min_eval_s` and never more often than
five times their own cost allows (a long log does not turn the watch into a busy loop). When
`run_end` arrives the full report (criteria and every rule) is built once: its verdict is the
one `moh report` gives for the finished file.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

from moh import plan, schema

from ..load import LoadError, load_bytes
from .early import early_findings
from .follow import Follower
from .records import number, read_records

SPARK_POINTS = 40  # values kept per sparkline: the width it is drawn at


class LiveRun:
    def __init__(self, path, criteria=None, min_eval_s: float = 1.0):
        self.follower = Follower(path)
        self.path: Path = self.follower.path
        self.criteria = criteria
        self.min_eval_s = min_eval_s
        self._reset()

    def _reset(self) -> None:
        self.text = bytearray()  # the lines read so far: what the rules judge (about the file's size)
        self.start: dict | None = None
        self.end: dict | None = None
        self.step: dict | None = None      # the latest step record
        self.evals: list[dict] = []
        self.alerts: list[dict] = []
        self.resumes = 0
        self.n_steps = 0
        self.phase_first: dict[str, int] = {}  # phase -> its first step number
        self.anchor: tuple[int, float] | None = None  # (step, elapsed) of the first step since a resume
        self.series = {k: deque(maxlen=SPARK_POINTS) for k in ("loss", "grad_norm", "heads")}
        self.findings: list = []
        self.report = None
        self.error: str | None = None
        self.bad = [0]
        self._pending = False
        self._eval_at = 0.0
        self._eval_cost = 0.0

    # ---- reading -----------------------------------------------------------------------------

    def update(self) -> bool:
        """Read what was appended; True when anything new arrived."""
        restarts = self.follower.restarts
        lines = self.follower.poll()
        if self.follower.restarts != restarts:  # replaced (--overwrite): a new run from its start
            self._reset()
        if not lines:
            return False
        self.text += b"\n".join(lines) + b"\n"
        for rec in read_records(lines, self.bad):
            self._fold(rec)
        return True

    def _fold(self, rec: dict) -> None:
        kind = rec.get("event")
        if kind == schema.RUN_START:
            self.start = rec
        elif kind == schema.STEP:
            self.step = rec
            self.n_steps += 1
            self.phase_first.setdefault(rec.get("phase"), rec.get("step", 0))
            self.series["loss"].append(number(rec.get("loss")))
            self.series["grad_norm"].append(number(rec.get("grad_norm")))
            self.series["heads"].append(self.mean_heads(rec))
            if self.anchor is None and isinstance(rec.get("step"), int) and number(rec.get("elapsed")) is not None:
                self.anchor = (rec["step"], number(rec.get("elapsed")))
            self._pending = True
        elif kind == schema.EVAL:
            self.evals.append(rec)
        elif kind == schema.ALERT:
            self.alerts.append(rec)
        elif kind == schema.RESUME:
            self.resumes += 1
            self.anchor = None  # a resumed process counts `elapsed` from its own start
            self.end = None  # an interrupted run goes on
        elif kind == schema.RUN_END:
            self.end = rec
            self._pending = True

    # ---- what the view shows -----------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """Ended for good: a run_end other than an interruption (that one may be resumed)."""
        return self.end is not None and self.end.get("status") != schema.STATUS_INTERRUPTED

    @staticmethod
    def mean_heads(rec: dict) -> float | None:
        vals = [number(l.get("heads_mean")) for l in rec.get("layers") or [] if isinstance(l, dict)]
        vals = [v for v in vals if v is not None]
        return sum(vals) / len(vals) if vals else None

    def plan(self) -> dict | None:
        return None if self.start is None else plan.planned_steps(self.start)

    def total_steps(self) -> int | None:
        p = self.plan()
        return sum(ph["steps"] for ph in p.values()) if p else None

    def eta_s(self) -> float | None:
        """Seconds left at the pace of this training process (None: not known yet). A fresh run
        is timed from its start; a resumed one from its first step (its clock restarted)."""
        total, s = self.total_steps(), self.step
        if not total or s is None or self.finished:
            return None
        elapsed, done = number(s.get("elapsed")), s.get("step")
        if elapsed is None or not isinstance(done, int) or done <= 0:
            return None
        s0, e0 = (0, 0.0) if not self.resumes else (self.anchor or (done, elapsed))
        if done <= s0 or elapsed <= e0:
            return None
        return max(0.0, (total - done) * (elapsed - e0) / (done - s0))

    # ---- judging -----------------------------------------------------------------------------

    def evaluate(self, force: bool = False) -> bool:
        """Run the early rules (and, once ended, the full report) if there is something new and
        it is time; True when it ran."""
        now = time.monotonic()
        if not self._pending or not self.n_steps:
            return False
        if not force and not self.finished and now - self._eval_at < max(self.min_eval_s, 5 * self._eval_cost):
            return False
        self._pending = False
        self._eval_at = now
        try:
            run = load_bytes(self.text, self.path)
            if self.finished:
                from ..report import build_report

                self.report = build_report(run, self.criteria)
                self.findings = [f for f in self.report.findings if f.severity != "info"]
            else:
                self.findings = early_findings(run)
            self.error = None
        except LoadError as e:
            self.error = str(e)
        self._eval_cost = time.monotonic() - now
        return True

    @property
    def exit_code(self) -> int:
        """The report's exit code once judged: 0 pass, 1 fail; 0 while nothing is judged yet."""
        return 0 if self.report is None or self.report.verdict == "pass" else 1
