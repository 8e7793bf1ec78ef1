"""Write output files all-or-nothing: a failed write leaves nothing behind (issue 5 item 5).

`atomic_output(dst)` yields a binary file handle; on success the content appears at exactly `dst`
(temp file in the same directory, then `os.replace`), with the permissions a plain `open()` would
give (mkstemp's 0600 would make shared figures and logs unreadable to others). On any failure
the temp file and the parent directories this call created are removed, and an `OutputError`
names `dst`.

Special files are written through, never replaced: `-o /dev/stdout` streams, and `-o /dev/full`
fails with "No space left on device" instead of swapping the device node for a regular file
(which a rename would do when run as root).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import BinaryIO, Iterator

from moh.atomic import file_mode, replacing

__all__ = ["OutputError", "atomic_output", "make_dirs", "remove_dirs", "file_mode"]


class OutputError(OSError):
    """An output cannot be written. The message is one line naming the path."""


def _reason(e: BaseException) -> str:
    return (getattr(e, "strerror", None) or str(e) or type(e).__name__).strip()


def make_dirs(path: Path) -> list[Path]:
    """mkdir -p `path`; returns the directories created (outermost first), for `remove_dirs`."""
    missing = []
    p = Path(path)
    while not p.exists():
        if p.is_symlink():  # a dangling link: mkdir would fail with a confusing message
            raise OutputError(f"cannot write to {path}: {p} is a broken symbolic link")
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    if p.exists() and not p.is_dir():
        raise OutputError(f"cannot write to {path}: {p} is not a directory")
    created = []
    try:
        for d in reversed(missing):
            os.mkdir(d)
            created.append(d)
    except OSError as e:
        remove_dirs(created)
        raise OutputError(f"cannot write to {path}: {_reason(e)}") from None
    return created


def remove_dirs(created: list[Path]) -> None:
    """Remove directories made by `make_dirs`, innermost first, if they are still empty."""
    for d in reversed(created):
        try:
            os.rmdir(d)
        except OSError:
            break


@contextlib.contextmanager
def atomic_output(dst: str | os.PathLike) -> Iterator[BinaryIO]:
    """Yield a binary handle whose content lands at `dst` only if the block completes."""
    dst = Path(dst)
    try:
        st = os.stat(dst)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OutputError(f"cannot write to {dst}: {_reason(e)}") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputError(f"cannot write to {dst}: is a directory")
    if st is not None and not stat.S_ISREG(st.st_mode):
        # a device or pipe: write through (nothing partial can be left in a regular file)
        try:
            with open(dst, "wb") as fh:
                yield fh
        except OSError as e:
            raise OutputError(f"cannot write to {dst}: {_reason(e)}") from None
        return
    created = make_dirs(dst.parent)
    try:
        with replacing(dst) as fh:  # the temp file, its mode and the rename: moh/atomic.py
            yield fh
    except BaseException as e:
        remove_dirs(created)
        if isinstance(e, OSError) and not isinstance(e, OutputError):
            raise OutputError(f"cannot write to {dst}: {_reason(e)}") from None
        raise
