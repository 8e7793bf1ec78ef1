"""Reading a log file: open (gunzipping transparently), sniff the format, cut the bytes into
line-aligned blocks. Every failure to read becomes a one-line `LoadError` naming the file."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path
from typing import Iterator

_HEAD_PROBE = 65536  # bytes read to sniff the format
_BLOCK_BYTES = 16 << 20  # bytes read at a time (read_csv has a high per-call cost: few large calls)
_MAX_LISTED_LINES = 10


class LoadError(Exception):
    """The log cannot be read or used. The message is one line naming the file (and line)."""


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _lines_list(numbers: list[int], total: int) -> str:
    shown = ", ".join(str(n) for n in numbers[:_MAX_LISTED_LINES])
    return shown + (f", … ({total} in all)" if total > len(numbers[:_MAX_LISTED_LINES]) else "")


# ---- input: open, sniff, iterate -------------------------------------------------------------


def _open_binary(path: Path):
    """Open `path` for reading bytes, transparently gunzipping; errors become LoadError."""
    try:
        if path.is_dir():
            raise LoadError(f"{path}: is a directory, not a log file")
        fh = open(path, "rb")
    except LoadError:
        raise
    except FileNotFoundError:
        raise LoadError(f"{path}: no such file") from None
    except PermissionError:
        raise LoadError(f"{path}: permission denied") from None
    except OSError as e:
        raise LoadError(f"{path}: cannot open ({e.strerror or e})") from None
    try:
        magic = fh.read(2)
        fh.seek(0)
    except OSError as e:
        fh.close()
        raise LoadError(f"{path}: cannot read ({e.strerror or e})") from None
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=fh, mode="rb")
    return fh


def _read_head(path: Path) -> bytes:
    fh = _open_binary(path)
    try:
        with fh:
            return fh.read(_HEAD_PROBE)
    except (OSError, EOFError, zlib.error) as e:
        raise LoadError(f"{path}: cannot read ({_one_line(e)})") from None


def _looks_like_jsonl(head: bytes) -> bool:
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{")


def _rustgpt():
    try:
        from .. import rustgpt  # lazy: only needed for reference logs
    except ImportError:
        return None
    return rustgpt


def sniff_format(path: Path, head: bytes) -> str:
    """'jsonl' or 'rustgpt' from the first bytes of the file; LoadError when neither."""
    if not head:
        raise LoadError(f"{path}: empty file")
    if _looks_like_jsonl(head):
        return "jsonl"
    rg = _rustgpt()
    if rg is not None and rg.sniff(head):
        return "rustgpt"
    if b"\x00" in head:
        raise LoadError(f"{path}: binary file, not a telemetry log")
    try:
        first = head.decode("utf-8").strip().splitlines()[0]
    except (UnicodeDecodeError, IndexError):
        raise LoadError(f"{path}: not a telemetry log (not UTF-8 text)") from None
    raise LoadError(f"{path}: not a moh telemetry log (line 1: {_one_line(first, 60)!r})")


def _blocks(fh, limit: int | None = None) -> Iterator[bytes]:
    """Pieces of `fh` of about _BLOCK_BYTES that end at a line end (the last one may not).

    `limit`: read at most that many bytes (a line-aligned chunk of the file).
    """
    rest: list[bytes] = []  # the start of a line that began in an earlier piece
    left = math.inf if limit is None else limit
    while left > 0:
        data = fh.read(int(min(_BLOCK_BYTES, left)))
        if not data:
            break
        left -= len(data)
        cut = data.rfind(b"\n") + 1
        if cut == 0:  # no line end in this piece: a very long line, keep reading
            rest.append(data)
            continue
        yield b"".join(rest) + data[:cut] if rest else data[:cut]
        rest = [data[cut:]] if cut < len(data) else []
    if rest:
        yield b"".join(rest)


def _file_blocks(fh, start: int, end: int) -> Iterator[bytes]:
    """Bytes [start, end) of a seekable file in pieces of about _BLOCK_BYTES that end at a line end
    (but the last): each cut is found by a readline at the target, then the piece is read whole, so
    no piece is sliced or joined again (16 MB copies each, in `_blocks`)."""
    pos = start
    while pos < end:
        nxt = end
        if pos + _BLOCK_BYTES < end:
            fh.seek(pos + _BLOCK_BYTES - 1)
            fh.readline()  # to the start of the line after the target
            nxt = min(max(fh.tell(), pos + 1), end)
        fh.seek(pos)
        data = fh.read(nxt - pos)
        if not data:
            return
        yield data
        pos += len(data)


def _chunk_blocks(path: Path, start: int, end: int) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        yield from _file_blocks(fh, start, end)
