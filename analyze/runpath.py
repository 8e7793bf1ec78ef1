"""Where a run's log is: `moh train` names a run directory, the log inside it is `run.jsonl`.
Every command that reads a log takes either (cli.py's shared `run_logs` callback)."""

from __future__ import annotations

import os
from pathlib import Path

RUN_FILE = "run.jsonl"  # moh.telemetry.RUN_LOG; repeated here so this stays import-free


def log_path(path: str | os.PathLike) -> Path:
    """The log a command means by `path`: a run directory's run.jsonl, else the path itself.
    A directory without one still maps to it, so the error names the file that is missing."""
    p = Path(path)
    return p / RUN_FILE if p.is_dir() else p
