"""`moh watch`: follow one or more runs live until they end, then leave the verdict on screen.

The loop polls each run's log for new lines (`LiveRun.update`), lets the early rules run when
there is something new (`LiveRun.evaluate`), and redraws the dashboard (`view.render`). It ends
when every run has ended for good (a `run_end` that is not an interruption: an interrupted run
may be resumed and is followed on), with the report's exit code: 0 pass, 1 fail (any run).
Ctrl-C leaves the rich display (which restores the cursor) and returns 130.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.live import Live

from .state import LiveRun
from .view import render

EXIT_INTERRUPTED = 130
EXIT_BAD_INPUT = 3


class WatchError(Exception):
    """A run that cannot be watched (no log, no step); the message is one line."""


NOT_JSONL_LINES = 5  # this many lines and not one record: not a telemetry log


def _drain(run: LiveRun) -> None:
    while run.update():
        pass
    if run.bad[0] >= NOT_JSONL_LINES and run.start is None and not run.n_steps:
        raise WatchError(f"{run.path}: not a JSONL telemetry log (moh watch follows run.jsonl; "
                         f"moh report and moh import read reference trainer text logs)")


def _exit_code(runs: list[LiveRun]) -> int:
    for r in runs:
        if r.finished and not r.n_steps:
            raise WatchError(f"{r.path}: the run ended with no step records, nothing to judge")
    return max(r.exit_code for r in runs)


def snapshot(paths, criteria=None, console: Console | None = None) -> int:
    """`--once`: read what each log holds now, print one dashboard, return the exit code (the
    report's for runs that ended, 0 for runs still going)."""
    runs = [LiveRun(p, criteria) for p in paths]
    for r in runs:
        if not r.path.exists():
            raise WatchError(f"{r.path}: no such file")
        _drain(r)
        r.evaluate(force=True)
    (console or Console()).print(render(runs))
    return _exit_code(runs)


def follow(paths, criteria=None, interval: float = 0.5, console: Console | None = None) -> int:
    """Follow until every run ended; the exit code (130 on Ctrl-C)."""
    runs = [LiveRun(p, criteria) for p in paths]
    console = console or Console()
    try:
        with Live(render(runs), console=console, auto_refresh=False, transient=False) as live:
            while True:
                for r in runs:
                    _drain(r)
                    r.evaluate()
                live.update(render(runs), refresh=True)
                if all(r.finished for r in runs):
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return _exit_code(runs)
