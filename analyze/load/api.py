"""Entry points: `load_run` (a path: JSONL, gzip, or a reference trainer text log) and
`load_records` (records already in memory)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable

from ..run import Run
from .fast import Builder
from .parallel import _MAX_WORKERS, _PARALLEL_MIN_BYTES, _parallel_builders, merge
from .reference import _LineError
from .scan import _scan
from .source import (LoadError, _blocks, _file_blocks, _looks_like_jsonl, _one_line, _open_binary, _read_head,
                     _rustgpt, sniff_format)

INPUT_FORMATS = ("auto", "jsonl", "rustgpt")


def load_records(records: Iterable[dict], path: str | os.PathLike, *, strict: bool = False,
                 notes: Iterable[str] = ()) -> Run:
    """Build a `Run` from schema records (e.g. converted from another log format).

    The same frame builder as `load_run`, so imported logs and native logs look alike. The
    record number (1-based) stands in for the line number in notes and errors.
    """
    p = Path(path)
    builder = Builder(p, strict)
    for text in notes:
        builder.note(None, text)
    try:
        for i, rec in enumerate(records, 1):
            builder.add(rec, i)
    except _LineError as e:
        raise LoadError(f"{p}:{e.line}: {e.reason}" if e.line is not None else f"{p}: {e.reason}") from None
    return builder.finish()


def _auto_workers(size: int) -> int:
    return max(1, min(os.cpu_count() or 1, _MAX_WORKERS, size // _PARALLEL_MIN_BYTES))


def _load_jsonl(p: Path, strict: bool, workers: int | None, gz: bool) -> Run:
    parts = None
    if not gz:
        n = _auto_workers(p.stat().st_size) if workers is None else workers
        if n > 1:
            parts = _parallel_builders(p, strict, n)
    if parts is None:
        builder = Builder(p, strict)
        try:
            with _open_binary(p) as fh:
                regular = not gz and stat.S_ISREG(os.fstat(fh.fileno()).st_mode)  # not a pipe or FIFO
                _scan(_file_blocks(fh, 0, os.fstat(fh.fileno()).st_size) if regular else _blocks(fh),
                      builder, True)
        except _LineError as e:
            raise LoadError(f"{p}:{e.line}: {e.reason}") from None
        return builder.finish()
    builder, off = None, 0
    for part in parts:  # in file order, so the first error reported is the first in the file
        if isinstance(part, _LineError):
            raise LoadError(f"{p}:{part.line + off}: {part.reason}")
        if builder is None:
            builder = part
        else:
            try:
                merge(builder, part, off)
            except _LineError as e:
                raise LoadError(f"{p}:{e.line}: {e.reason}") from None
        off += part.n_lines
    return builder.finish()


def load_run(path: str | os.PathLike, *, strict: bool = False, input_format: str = "auto",
             workers: int | None = None) -> Run:
    """Load a telemetry log into a `Run`.

    path          `run.jsonl` or a gzip of it (recognised by its magic bytes, whatever the name);
                  a reference Rust trainer text log is recognised by content.
    strict        bad lines and wrong types raise `LoadError` instead of becoming notes.
    input_format  "auto" (sniff the content), "jsonl" or "rustgpt".
    workers       processes parsing line-aligned chunks of a large uncompressed log (None: one per
                  CPU, up to 8, only past 64 MB); the result does not depend on it.
    Raises LoadError (one-line message naming the file and line) when the log is unusable.
    """
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input_format must be one of {INPUT_FORMATS}, not {input_format!r}")
    p = Path(path)
    head = _read_head(p)
    fmt = sniff_format(p, head) if input_format == "auto" else input_format
    if not head:
        raise LoadError(f"{p}: empty file")
    if fmt == "rustgpt":
        rg = _rustgpt()
        if rg is None:
            raise LoadError(f"{p}: reading reference Rust trainer logs needs analyze.rustgpt, which is missing")
        imported: list = []
        try:
            run = load_records(rg.iter_records(p, notes=imported), p, strict=strict)
        except LoadError:
            raise
        except (OSError, UnicodeError, ValueError) as e:  # rustgpt.RustLogError is a ValueError
            msg = _one_line(e, 200)
            raise LoadError(msg if msg.startswith(str(p)) else f"{p}: {msg}") from None
        run.notes[:0] = [n if str(n).startswith(str(p)) else f"{p}: {_one_line(n, 200)}" for n in imported]
        return run
    if b"\x00" in head and not _looks_like_jsonl(head):
        raise LoadError(f"{p}: binary file, not a telemetry log")
    with open(p, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    return _load_jsonl(p, strict, workers, gz)
