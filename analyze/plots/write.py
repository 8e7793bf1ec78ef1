"""`write_figures`: draw every family (serially or in the fork pool) and rename the figures into
place only when all are drawn: a failure leaves no new figure, no temp file, no new directory."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

from analyze.atomic import OutputError, file_mode, remove_dirs
from analyze.run import Run
from .style import FORMATS, PlotWarning
from .common import as_runs, check_x
from .families import FAMILIES
from .files import prepare, render, temp_name
from .pool import can_fork, render_forked, usable_cpus


def write_figures(
    runs: Run | Sequence[Run],
    out_dir: Path | str,
    *,
    fmt: str = "png",
    x: str = "step",
    families: Sequence[str] | None = None,
    buckets: int | None = None,
    jobs: int | None = None,
    marks: list | None = None,
) -> list[Path]:
    """Draw every family for `runs` (overlaid) and save `<out_dir>/<family>.<fmt>`.

    Returns the written paths, in family order. A family without data is skipped with a
    `PlotWarning`. Raises OSError (OutputError) when `out_dir` cannot be created or written.
    All or nothing: figures are drawn into temp files and renamed into place only once every
    family has been drawn, so a failure (full disk, a drawing error) leaves no new figure, no
    temp file, and no directory this call created.
    `marks`: (finding dict, run) pairs to mark on the figure of their series (`moh plot
    --findings`, analyze/plots/markers.py).
    `jobs`: figures drawn in that many forked processes (serial where fork is unavailable).
    Default (None): one per CPU this process may use, up to the number of families. On a quiet
    2-core machine the six figures of a 200k-step run took 3.1-3.3 s with 2 jobs against
    4.1-4.6 s in turn; on a machine already busy with other work extra jobs do not help.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    check_x(x)
    runs = as_runs(runs)
    names = list(families or FAMILIES)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown figure families {unknown}; known: {list(FAMILIES)}")
    out = Path(out_dir)
    created = prepare(out)
    jobs = min(usable_cpus(), len(names)) if jobs is None else jobs
    try:
        if jobs > 1 and len(names) > 1 and can_fork():
            results = render_forked(runs, names, out, fmt, x, buckets, jobs, marks)
        else:
            results = [render(runs, name, out, fmt, x, buckets, marks=marks) for name in names]
        mode = file_mode()
        for path, tmp, _ in results:
            if tmp is not None:
                os.chmod(tmp, mode)  # mkstemp's 0600 would hide shared figures from others
                os.replace(tmp, path)
    except BaseException as e:
        for name in names:  # temp files of every family, whichever process drew them
            for tmp in out.glob(temp_name(out / f"{name}.{fmt}") + "*.tmp"):
                try:
                    tmp.unlink()
                except OSError:
                    pass
        remove_dirs(created)
        if isinstance(e, OSError) and not isinstance(e, OutputError):
            raise OutputError(f"cannot write to {out}: {e.strerror or e}") from None
        raise
    written = []
    for path, _, messages in results:
        for message in messages:
            warnings.warn(message, PlotWarning, stacklevel=2)
        if path is not None:
            written.append(path)
    return written
