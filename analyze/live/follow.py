"""Following a log that is still being written: each poll reads only the bytes added since the
last one and hands back the complete lines among them.

A line is consumed only once its newline has arrived, so a line caught half-written is read
whole on a later poll. A file that shrinks below what was consumed was replaced (`moh train
--overwrite`) and is followed again from its start; a killed run's torn last line is cut by
the resumed run (moh/telemetry.py) before it appends, which never reaches below a newline, so
a resume needs nothing special here: its `resume` record and steps simply follow.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..runpath import log_path

READ_MAX = 4 << 20  # bytes read per poll at most: a huge existing log arrives over a few polls


class Follower:
    def __init__(self, path: str | os.PathLike):
        self.given = Path(path)    # a run directory may not exist yet when the watch starts
        self.path = log_path(path)
        self.offset = 0          # bytes consumed: always just after a newline
        self.restarts = 0        # times the file was replaced and read again from the start
        self._ino: int | None = None

    def poll(self) -> list[bytes]:
        """Complete lines (without newline) added since the last poll; [] when none or no file yet."""
        self.path = log_path(self.given)
        try:
            fh = open(self.path, "rb")
        except (FileNotFoundError, IsADirectoryError):
            return []
        with fh:
            st = os.fstat(fh.fileno())
            if (self._ino is not None and st.st_ino != self._ino) or st.st_size < self.offset:
                self.offset, self.restarts = 0, self.restarts + 1
            self._ino = st.st_ino
            if st.st_size == self.offset:
                return []
            fh.seek(self.offset)
            chunk = fh.read(min(READ_MAX, st.st_size - self.offset))
        end = chunk.rfind(b"\n")
        if end < 0:
            return []  # a partial line: wait for its newline
        self.offset += end + 1
        return [line for line in chunk[:end].split(b"\n") if line.strip()]

    @property
    def restarted(self) -> bool:
        return self.restarts > 0
