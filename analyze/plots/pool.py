"""Drawing several families at once in forked worker processes.

The runs reach the workers by inheritance at fork, not by pickling (gigabytes on long runs).
Each worker draws into a temp file (`files.render`) and returns its path; the parent renames.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

from analyze.run import Run

from .files import render

_FORKED_RUNS: list[Run] = []  # set just before the fork, read by the workers, cleared after
_FORKED_MARKS: list = []  # the findings to mark (markers.py), passed the same way

# Drawing cost of each family on a long run, most expensive first (bench/bench_plot.py).
_COST_RANK = {name: i for i, name in enumerate(
    ["heads", "thresholds", "complexity", "head_load", "grad_norms", "loss"])}


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def _render_forked(name: str, out: Path, fmt: str, x: str, buckets: int | None):
    return render(_FORKED_RUNS, name, out, fmt, x, buckets, clear=False, marks=_FORKED_MARKS)


def render_forked(runs: list[Run], names: Sequence[str], out: Path, fmt: str, x: str,
                  buckets: int | None, jobs: int, marks: list | None = None) -> list:
    """`files.render`'s results for every family in `names` (in that order), drawn by up to
    `jobs` forked processes."""
    global _FORKED_RUNS, _FORKED_MARKS
    _FORKED_RUNS, _FORKED_MARKS = runs, list(marks or [])
    # The costliest families are handed out first, so the last one to finish is a cheap one.
    by_cost = sorted(names, key=lambda n: _COST_RANK.get(n, len(_COST_RANK)))
    try:
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=min(jobs, len(names)), mp_context=ctx) as pool:
            futures = {n: pool.submit(_render_forked, n, out, fmt, x, buckets) for n in by_cost}
            return [futures[n].result() for n in names]
    finally:
        _FORKED_RUNS, _FORKED_MARKS = [], []
