"""Telemetry sinks: the training loop hands every record to one object and never branches on
whether telemetry is on. Records are plain dicts whose names come from `moh.schema`.

- `NullSink`: does nothing (library use, tests, ranks other than 0).
- `JsonlSink`: appends one line per record to `<out>/run.jsonl`, flushed as written, so a
  crashed or killed run leaves every record up to that moment readable.
- `TeeSink`: forwards each record to several sinks (e.g. the file and a progress display).

A `Monitor` is a sink the loop also asks, after each logged step, for alerts to write: how
`moh train` runs the report's early rules while training without moh/ importing analyze/.
"""

from __future__ import annotations

import os
from typing import Protocol

from . import schema

RUN_LOG = "run.jsonl"


class Sink(Protocol):
    def write(self, record: dict) -> None: ...
    def close(self) -> None: ...


class Monitor(Sink, Protocol):
    def check(self, step: int) -> list[tuple[str, str, str]]:
        """New alerts after the step record of `step`: (level, code, message) each."""
        ...


class NullSink:
    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlSink:
    """One line per record, handed to the OS in one unbuffered write as it comes: a SIGKILL
    loses nothing that `write` returned from (the OS keeps the page cache). `sync` adds an
    fsync (power loss); the loop calls it before each checkpoint and `close` calls it once, not
    per record (fsync costs 0.4-6 ms a record on the test VM, the write ~0.02 ms; see
    docs/reliability.md). A write that fails part-way (disk full) is cut back to the last
    complete line and raises; the sink then refuses further records, so the file never holds
    a torn line it wrote itself.

    `append=True` (resume) keeps the existing log; a torn last line left by a kill is cut
    off first (`torn_bytes` says how many bytes) so the next record starts on its own line.
    """

    def __init__(self, out_dir: str | os.PathLike, *, overwrite: bool = False, append: bool = False):
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, RUN_LOG)
        self.torn_bytes = 0
        if append:
            self.torn_bytes = _cut_torn_tail(self.path)
        elif os.path.exists(self.path) and not overwrite:
            raise FileExistsError(f"{self.path} exists (pass overwrite=True / --overwrite)")
        self._f = open(self.path, "ab" if append else "wb", buffering=0)
        self._size = os.fstat(self._f.fileno()).st_size
        self._failed: OSError | None = None

    def write(self, record: dict) -> None:
        if record.get("event") not in schema.EVENTS:
            raise ValueError(f"unknown record kind {record.get('event')!r}")
        if self._failed is not None:
            raise OSError(self._failed.errno, f"{self._failed.strerror} (earlier write)", self.path)
        data = memoryview(schema.encode_line(record))
        done = 0
        try:
            while done < len(data):
                done += self._f.write(data[done:])
        except OSError as e:
            self._failed = e
            try:
                os.ftruncate(self._f.fileno(), self._size)
            except OSError:
                pass
            raise
        self._size += done

    def sync(self) -> None:
        if not self._f.closed:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            try:
                self.sync()
            finally:
                self._f.close()


def _cut_torn_tail(path: str) -> int:
    """Truncate `path` after its last newline; the number of bytes removed (0 if none/absent)."""
    try:
        f = open(path, "r+b")
    except FileNotFoundError:
        return 0
    with f:
        end = f.seek(0, os.SEEK_END)
        pos = end
        while pos > 0:
            start = max(0, pos - 65536)
            f.seek(start)
            chunk = f.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                pos = start + nl + 1
                break
            pos = start
        if pos < end:
            f.truncate(pos)
        return end - pos


class TeeSink:
    def __init__(self, *sinks: Sink):
        self.sinks = sinks

    def write(self, record: dict) -> None:
        for s in self.sinks:
            s.write(record)

    def close(self) -> None:
        for s in self.sinks:
            s.close()
