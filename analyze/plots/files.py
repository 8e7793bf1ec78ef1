"""Writing one figure: drawing a family into a temp file next to its destination, and checking
the output directory can be written. Renaming into place is `write_figures`' job (all or nothing)."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from analyze.atomic import OutputError, make_dirs, remove_dirs
from moh.atomic import temp_beside
from analyze.run import Run
from .style import DPI, MissingDataError, PlotWarning, RC
from .families import FAMILIES
from .markers import mark


def temp_name(path: Path) -> str:
    """The prefix of `moh.atomic.temp_beside`'s temp files for `path`."""
    return f".{path.name}."


def save_temp(fig: Figure, path: Path, fmt: str) -> Path:
    """Draw into a temp file next to `path`; `write_figures` renames all of them at the end."""
    fd, tmp = temp_beside(path)  # named temp_name(path) + "*.tmp": write_figures finds strays by it
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format=fmt, dpi=DPI)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return Path(tmp)


def prepare(out_dir: Path) -> list[Path]:
    """Create `out_dir` if needed and check it can be written; returns the directories created."""
    created = make_dirs(out_dir)
    try:
        fd, probe = tempfile.mkstemp(dir=out_dir, prefix=".moh-plot-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        remove_dirs(created)
        raise OutputError(f"cannot write to {out_dir}: {e.strerror or e}") from None
    return created


def prepare_output_dir(out_dir: Path) -> Path:
    """Create `out_dir` if needed and check it can be written; raises OSError (OutputError) if not."""
    out_dir = Path(out_dir)
    prepare(out_dir)
    return out_dir


def render(runs: list[Run], name: str, out: Path, fmt: str, x: str, buckets: int | None,
            clear: bool = True, marks: list | None = None) -> tuple[Path | None, Path | None, list[str]]:
    """Draw one family into a temp file; returns (path, temp file; both None when skipped, warnings).
    `clear`: free the figure's artists at once (a worker process about to exit need not).
    `marks`: (finding dict, run) pairs drawn on the figure of their series (markers.py)."""
    with warnings.catch_warnings(record=True) as caught, matplotlib.rc_context(RC):
        warnings.simplefilter("always", PlotWarning)
        try:
            kwargs = {} if name == "head_load" else {"x": x}
            if buckets is not None and name != "head_load":
                kwargs["buckets"] = buckets
            axes = FAMILIES[name](runs, **kwargs)
        except MissingDataError as exc:
            warnings.warn(str(exc), PlotWarning)
            path = tmp = None
        else:
            fig = axes[0].figure
            if marks:
                mark(axes, name, marks, runs, x)
            try:
                path = out / f"{name}.{fmt}"
                tmp = save_temp(fig, path, fmt)
            finally:
                if clear:
                    fig.clear()
    return path, tmp, [str(w.message) for w in caught if issubclass(w.category, PlotWarning)]
