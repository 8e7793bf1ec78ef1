"""Atomic file replacement, the one implementation every writer uses (checkpoints, config.toml,
report and plot outputs): write a temp file beside the destination, then `os.replace` it, so a
reader or a crash sees the old file or the new one, never half of one.

Why beside: `os.replace` is atomic only within one filesystem. Why `file_mode`: mkstemp creates
0600, which would hide shared checkpoints, logs and figures from other users; the result gets
what a plain `open(path, "w")` would have given. Torch-free (the analysis side uses it too).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator


def file_mode() -> int:
    """0o666 less the process umask: what open(..., "w") would have created."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def temp_beside(path: str | os.PathLike) -> tuple[int, str]:
    """(fd, name) of a new temp file in `path`'s directory, named `.<name>.<random>.tmp`."""
    path = Path(path)
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename in `directory` durable (power loss); silently skipped where impossible."""
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


@contextlib.contextmanager
def replacing(path: str | os.PathLike, *, durable: bool = False) -> Iterator[BinaryIO]:
    """Yield a binary handle whose content replaces `path` only if the block completes; on any
    error the temp file is removed and the error propagates. `durable`: fsync the file before
    the rename and the directory after it (checkpoints, whose loss costs a run)."""
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
            os.fchmod(fh.fileno(), file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(Path(path).parent)
