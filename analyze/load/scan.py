"""The line scanner: feeds the records of a stream of blocks into a builder, handing runs of
same-layout lines to its bulk path and every other line to the careful one-record path."""

from __future__ import annotations

import io
import json
import zlib
from typing import Any, Iterable

import orjson

from . import fast
from .reference import ReferenceBuilder, _LineError
from .source import _one_line

def _slow_parse(line: bytes) -> Any:
    """Parse a line orjson refused: bare NaN/Infinity tokens, a BOM, blank. None when it is bad."""
    text = line.decode("utf-8", errors="strict").lstrip("\ufeff")
    if not text.strip():
        return _BLANK
    return json.loads(text)  # accepts NaN, Infinity, -Infinity


_BLANK = object()


def _scan(blocks: Iterable[bytes], builder: ReferenceBuilder, is_last: bool) -> None:
    """Feed the records in `blocks` into `builder` (line numbers relative to the first line given).

    `blocks` are consecutive pieces of the text that each end with a newline, but the last may not.
    A block whose every line repeats the layout of the last bulk-read run is read whole (the
    common case: no Python object per line); any other block is split into lines and each run of
    repeated layout is still bulk-read where long enough.

    A bad line is held back one line: only when it turns out to be the file's last line, without a
    newline, is it a truncated write rather than a bad line.
    """
    loads = orjson.loads
    add = builder.add
    lineno = 0
    pending: tuple[int, str, bool] | None = None

    def one(line: bytes) -> None:  # the careful path: one line, any content
        nonlocal lineno, pending
        lineno += 1
        try:
            rec = loads(line)
        except orjson.JSONDecodeError as e:
            try:
                rec = _slow_parse(line)
            except (ValueError, RecursionError) as e2:  # UnicodeDecodeError is a ValueError
                if pending is not None:
                    builder.bad_line(*pending[:2])
                reason = ("not valid UTF-8" if isinstance(e2, UnicodeDecodeError)
                          else f"invalid JSON ({_one_line(e, 80)})")
                pending = (lineno, reason, line.endswith(b"\n"))
                return
            if rec is _BLANK:
                return
        if pending is not None:
            builder.bad_line(*pending[:2])
            pending = None
        add(rec, lineno)

    def flush_pending() -> None:  # a line follows it, so it was not a truncated last line
        nonlocal pending
        if pending is not None:
            builder.bad_line(*pending[:2])
            pending = None

    bulk = builder.bulk and fast._BULK_LINES > 1  # read at call time: tests set it to 0
    it = iter(blocks)
    read_error: BaseException | None = None
    try:
        while read_error is None:
            try:
                block = next(it, b"")
            except (EOFError, OSError, zlib.error) as e:
                read_error, block = e, b""  # the lines read before it are still used, then it is raised
            if not block:
                break
            if bulk and block.endswith(b"\n"):
                n = builder.add_block(block, lineno + 1)
                if n:
                    flush_pending()
                    lineno += n
                    continue
            lines = io.BytesIO(block).readlines()
            for i in range(0, len(lines), fast._BULK_LINES if bulk else len(lines)):
                batch = lines[i:i + fast._BULK_LINES] if bulk else lines
                pos = 0
                for start, stop, tmpl in builder.segments(batch) if bulk else ():
                    for line in batch[pos:start]:
                        one(line)
                    flush_pending()
                    if builder.add_bulk(b"".join(batch[start:stop]), stop - start, tmpl, lineno + 1):
                        lineno += stop - start
                    else:
                        for line in batch[start:stop]:
                            one(line)
                    pos = stop
                for line in batch[pos:] if pos else batch:
                    one(line)
        if read_error is not None:
            raise read_error
    except EOFError:  # gzip stream cut short: like a truncated last line
        builder.note(None, f"compressed stream ends early after line {lineno}; read what was complete")
    except (OSError, zlib.error) as e:
        if builder.n_records == 0 or builder.strict:
            raise _LineError(lineno + 1, f"cannot read ({_one_line(e, 80)})") from None
        builder.note(None, f"read error after line {lineno} ({_one_line(e, 80)}); kept what was read")
    builder.n_lines = lineno
    if pending is not None:
        bad_no, reason, had_newline = pending
        if is_last and bad_no == lineno and not had_newline:
            builder.note(bad_no, "truncated last line skipped (run still writing or killed)")
        else:
            builder.bad_line(bad_no, reason)
