"""Telemetry sinks: the training loop hands every record to one object and never branches on
whether telemetry is on. Records are plain dicts whose names come from `moh.schema`.

- `NullSink`: does nothing (library use, tests, ranks other than 0).
- `JsonlSink`: appends one line per record to `<out>/run.jsonl`, flushed as written, so a
  crashed or killed run leaves every record up to that moment readable.
- `TeeSink`: forwards each record to several sinks (e.g. the file and a progress display).
"""

from __future__ import annotations

import os
from typing import Protocol

from . import schema

RUN_LOG = "run.jsonl"


class Sink(Protocol):
    def write(self, record: dict) -> None: ...
    def close(self) -> None: ...


class NullSink:
    def write(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


class JsonlSink:
    def __init__(self, out_dir: str | os.PathLike, *, overwrite: bool = False):
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, RUN_LOG)
        if os.path.exists(self.path) and not overwrite:
            raise FileExistsError(f"{self.path} exists (pass overwrite=True / --overwrite)")
        self._f = open(self.path, "w", encoding="utf-8", newline="\n")

    def write(self, record: dict) -> None:
        if record.get("event") not in schema.EVENTS:
            raise ValueError(f"unknown record kind {record.get('event')!r}")
        self._f.write(schema.encode_record(record) + "\n")
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


class TeeSink:
    def __init__(self, *sinks: Sink):
        self.sinks = sinks

    def write(self, record: dict) -> None:
        for s in self.sinks:
            s.write(record)

    def close(self) -> None:
        for s in self.sinks:
            s.close()
