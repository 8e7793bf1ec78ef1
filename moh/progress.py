"""What `moh train` shows on stderr while it trains, fed by the loop's callback.

On a terminal: a rich progress bar per phase (epoch of total, steps, loss, heads, elapsed, ETA),
with eval and alert lines printed above it. Anywhere else (`2>file`, nohup, CI): one plain line
per finished epoch, per eval and per alert, each flushed as it happens, so the file reads in the
order things happened and a `tail -f` follows the run.
"""

from __future__ import annotations

import sys
import time
from typing import IO


def _em(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


class TrainProgress:
    def __init__(self, quiet: bool, stream: IO[str] | None = None, terminal: bool | None = None):
        from rich.console import Console

        self.stream = stream if stream is not None else sys.stderr
        self.console = Console(file=self.stream, force_terminal=terminal, soft_wrap=not terminal)
        self.quiet = quiet
        self.terminal = self.console.is_terminal if terminal is None else terminal
        self.t0 = time.time()
        self.progress = self.task = None
        self.evals: list[dict] = []
        self.last: dict = {}  # phase -> {"loss", "heads"} of its last logged step
        if not quiet and self.terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.progress = Progress(
                TextColumn("[bold]{task.fields[phase]:<8}[/] epoch {task.fields[epoch]:>3}/{task.fields[epochs]}"),
                BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}  heads {task.fields[heads]}"), TimeElapsedColumn(),
                TextColumn("ETA"), TimeRemainingColumn(),
                console=self.console, transient=False)

    def line(self, text: str) -> None:
        """One line above the bar on a terminal, else one flushed plain line."""
        if self.progress is not None:
            from rich.markup import escape

            self.progress.console.print(escape(text))
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def __call__(self, kind: str, info: dict) -> None:
        if kind == "eval":
            self.evals.append(info)
        if kind == "alert":  # always shown, even with --quiet: it is a warning about the run
            self.line(f"alert ({info['level']}) at step {info['step']}: {info['code']}: {info['message']}")
            return
        if self.quiet:
            return
        if kind == "phase_start":
            self._phase_start(info)
        elif kind == "step":
            self._step(info)
        elif kind == "eval":
            self.line(f"{info['phase']} eval: loss {info['loss']:.3f}  exact match {_em(info['exact_match'])}")
        elif kind == "end" and self.progress is not None:
            self.progress.stop()

    def _phase_start(self, info: dict) -> None:
        if self.progress is None:
            return
        if self.task is None:
            self.progress.start()
        else:
            self.progress.stop_task(self.task)
        self.task = self.progress.add_task("", total=info["total_steps"], phase=info["phase"], epoch=1,
                                           epochs=info["epochs"], loss="-", heads="-")

    def _step(self, info: dict) -> None:
        phase = info["phase"]
        if info.get("loss") is not None:
            self.last[phase] = {"loss": info["loss"], "heads": info["heads"]}
        last = self.last.get(phase, {})
        if self.progress is not None and self.task is not None:
            fields = {"epoch": info["epoch"] + 1}
            if last:
                fields |= {"loss": f"{last['loss']:.3f}", "heads": f"{last['heads']:.2f}"}
            self.progress.update(self.task, completed=info["i"], **fields)
            return
        per_epoch = info["total"] // max(1, info["epochs"])
        if per_epoch and info["i"] % per_epoch == 0:  # the last step of an epoch
            loss = "-" if not last else f"{last['loss']:.3f}"
            heads = "-" if not last else f"{last['heads']:.2f}"
            self.line(f"{phase} epoch {info['epoch'] + 1}/{info['epochs']}  step {info['i']}/{info['total']}  "
                      f"loss {loss}  heads {heads}  elapsed {time.time() - self.t0:.1f}s")
