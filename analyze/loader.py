"""Load a telemetry log (`run.jsonl`, `.jsonl.gz`, or a reference Rust trainer text log) into a `Run`.

Why it is written this way: a 200,000-step log of an 8-layer, 8-head model holds ~30 million numbers.
Building a dict or DataFrame per record, or keeping the parsed records, costs gigabytes. Instead each
record is parsed with orjson and its numbers are appended straight into typed `array.array` columns
(float32 for the per-layer and per-head statistics, where 7 significant digits are plenty); the frames
are assembled once at the end, without a copy where numpy allows. Runs of step lines that repeat one
layout (every engine log) skip even that: they are checked against a template and read by pandas' C CSV
parser in one call, with no Python object per number (`_Template`; anything else goes line by line).

Tolerance (issue 3 item 1, issue 5 item 5): a truncated last line is skipped with a note; other bad
lines are counted and noted with their line numbers; wrong types in known fields read as NaN with a
note; with `strict=True` each of those is a `LoadError` instead. Bare `NaN`/`Infinity` tokens (written
by other tools) and the schema's string tags both read as float NaN/inf. A resumed log whose steps
restart or overlap is resolved by step, last write wins, and said so in `Run.notes`.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import itertools
import json
import math
import operator
import os
import re
import stat
import struct
import zlib
from array import array
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import orjson
import pandas as pd

from moh import schema

from .run import Run

__all__ = ["LoadError", "load_run", "load_records", "INPUT_FORMATS"]

INPUT_FORMATS = ("auto", "jsonl", "rustgpt")

_NAN = math.nan
_NONFINITE = schema.NONFINITE_STRINGS
# Layer columns: the schema's required stats, then the optional ones a newer engine writes
# (older logs lack them: NaN, without a note).
_LAYER_STATS = schema.LAYER_STATS + schema.ALIGNMENT_STATS
_N_STATS = len(_LAYER_STATS)
_NO_ALIGNMENT = (_NAN,) * len(schema.ALIGNMENT_STATS)
_NAN_ROW = array("f", [_NAN]) * _N_STATS
# Top-level step keys handled explicitly (everything else numeric becomes its own column).
_STEP_STRUCTURED = frozenset({"event", "step", "phase", "layers"})
_STEP_DICTS = {"grad_norms": "grad.", "aux": "aux.", "aux_weighted": "aux_weighted."}
# Known numeric step fields: a wrong type there is worth a note; unknown non-numeric fields are ignored.
_STEP_NUMERIC = frozenset({
    "epoch", "time", "elapsed", "loss", "lm_loss", "lr", "grad_norm", "grad_norm_clipped",
    "tokens", "tokens_per_s", "skipped",
})
_GET_STATS = operator.itemgetter(*_LAYER_STATS)
_GET_REQUIRED_STATS = operator.itemgetter(*schema.LAYER_STATS)  # a log written before ALIGNMENT_STATS
_GET_LAYER = operator.itemgetter("layer")
_GET_LOAD = operator.itemgetter("head_load")
_N_LAYER_FIELDS = len(schema.LAYER_FIELDS)
_N_LAYER_FIELDS_ALIGNED = _N_LAYER_FIELDS + len(schema.ALIGNMENT_STATS)
_chain = itertools.chain.from_iterable


@functools.lru_cache(maxsize=256)
def _packer(n: int) -> struct.Struct:
    """Packs n Python numbers as float32: far faster than array.extend on a generic iterable."""
    return struct.Struct(f"={n}f")


@functools.lru_cache(maxsize=256)
def _pack_layers(n: int) -> struct.Struct:
    return struct.Struct(f"={n}h")
_HEAD_PROBE = 65536
# Bulk path (see `_Template`): runs of step lines with one layout are parsed as CSV by pandas' C reader.
_BULK_LINES = 8192  # lines checked together for runs of one layout; 0: line by line only
_BLOCK_BYTES = 16 << 20  # bytes read at a time (read_csv has a high per-call cost: few large calls)
_BULK_MIN = 48  # shorter runs go line by line (a read_csv call costs about as much as 50 lines)
_MAX_TEMPLATES = 64
_SKEL_DELETE = b"0123456789.+-"  # what varies inside a number token (an exponent's e/E stays in the layout)
_SKEL_CHARS = frozenset(_SKEL_DELETE.decode())
_CSV_TABLE = bytes.maketrans(b"{}[]:", b",,,,,")
# Letters (but the exponent's e/E), quotes and underscores only make the CSV longer: keys become empty
# or "e" fields that are never read. Halves the text the CSV tokenizer walks.
_CSV_DELETE = bytes(c for c in range(256) if (chr(c).isalpha() and chr(c) not in "eE") or chr(c) in '"_')
_JSON_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_MISSING = object()
_PARALLEL_MIN_BYTES = 64 << 20  # below this one process is faster than starting workers
# Sending a worker's columns back (pickle, pipe, unpickle) took about 0.45 s against 3.3 s of
# parsing for half of a 683 MB log: the first chunk is that much larger (bench/bench_analysis.py).
_FIRST_CHUNK_EXTRA = 0.12
_MAX_WORKERS = 8
_MAX_PLANS = 16  # distinct step-record key layouts given a fast path  # bytes read to sniff the format
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
        from . import rustgpt  # lazy: only needed for reference logs
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


def _slow_parse(line: bytes) -> Any:
    """Parse a line orjson refused: bare NaN/Infinity tokens, a BOM, blank. None when it is bad."""
    text = line.decode("utf-8", errors="strict").lstrip("\ufeff")
    if not text.strip():
        return _BLANK
    return json.loads(text)  # accepts NaN, Infinity, -Infinity


_BLANK = object()


class _LineError(Exception):
    """Raised inside the builder; becomes a LoadError once the absolute line number is known."""

    def __init__(self, line: int | None, reason: str):
        super().__init__(line, reason)
        self.line, self.reason = line, reason


def _scan(blocks: Iterable[bytes], builder: "_Builder", is_last: bool) -> None:
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

    bulk = builder.bulk and _BULK_LINES > 1
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
            for i in range(0, len(lines), _BULK_LINES if bulk else len(lines)):
                batch = lines[i:i + _BULK_LINES] if bulk else lines
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


def _load_chunk(path: Path, start: int, end: int, strict: bool, is_last: bool) -> "_Builder | _LineError":
    """Worker: parse bytes [start, end) of `path` (line-aligned) into a builder."""
    builder = _Builder(path, strict)
    try:
        _scan(_chunk_blocks(path, start, end), builder, is_last)
    except _LineError as e:
        return e
    builder._flush_plans()
    builder._plans, builder._plan = {}, None  # structs and getters do not pickle; no longer needed
    builder._templates, builder._template_tries, builder._last_template = {}, {}, None
    return builder


def _chunk_bounds(path: Path, size: int, n: int) -> list[tuple[int, int]]:
    """n line-aligned byte ranges. The first (parsed by this process) is _FIRST_CHUNK_EXTRA larger
    than the others: the workers' results still have to be pickled and sent back while it finishes."""
    weights = [1.0 + _FIRST_CHUNK_EXTRA] + [1.0] * (n - 1)
    total = sum(weights)
    cuts = [0]
    with open(path, "rb") as fh:
        for i in range(1, n):
            fh.seek(max(int(size * sum(weights[:i]) / total) - 1, cuts[-1]))
            fh.readline()  # to the start of the next line
            pos = fh.tell()
            if cuts[-1] < pos < size:
                cuts.append(pos)
    cuts.append(size)
    return list(zip(cuts[:-1], cuts[1:]))


def _parallel_builders(path: Path, strict: bool, workers: int) -> list["_Builder | _LineError"] | None:
    """Parse line-aligned chunks in `workers` processes (this one takes the first); None: not possible."""
    import concurrent.futures as cf
    import multiprocessing as mp

    size = path.stat().st_size
    bounds = _chunk_bounds(path, size, workers)
    if len(bounds) < 2:
        return None
    try:
        ctx = mp.get_context("fork")
        pool = cf.ProcessPoolExecutor(max_workers=len(bounds) - 1, mp_context=ctx)
    except (ValueError, OSError, ImportError, NotImplementedError):
        return None
    try:
        with pool:
            futures = [pool.submit(_load_chunk, path, a, b, strict, i == len(bounds) - 1)
                       for i, (a, b) in enumerate(bounds) if i > 0]
            first = _load_chunk(path, *bounds[0], strict, False)
            return [first] + [f.result() for f in futures]
    except (OSError, cf.process.BrokenProcessPool):
        return None


# ---- frame builder -----------------------------------------------------------------------------


def _num(v: Any) -> float | None:
    """A float for a JSON value that stands for a number; None when the type is wrong."""
    t = type(v)
    if t is float or t is int:
        return v
    if v is None:
        return _NAN
    if t is str:
        return _NONFINITE.get(v)
    if t is bool:
        return float(v)
    return None


class _Plan:
    """Fast path for the scalar fields of step records that share one key layout.

    Engine logs write the same keys in the same order on every step; for those, the numbers
    are fetched with one itemgetter, packed with one struct call and appended row-major. A
    record that does not fit (a null, a tag string, another layout) takes the per-field path.
    """

    __slots__ = ("keys", "top", "names", "get_top", "dicts", "struct", "buf", "rows")

    def __init__(self, keys: tuple, top: list[str], dicts: list[tuple[str, tuple]]):
        self.keys = keys
        self.top = top
        self.names = top + [_STEP_DICTS[k] + str(sub) for k, subs in dicts for sub in subs]
        getter = operator.itemgetter(*top) if top else (lambda r: ())
        self.get_top = getter if len(top) != 1 else (lambda r, g=getter: (g(r),))
        self.dicts = dicts
        self.struct = struct.Struct(f"={len(self.names)}d")
        self.buf = array("d")
        self.rows = array("i")

    @classmethod
    def build(cls, rec: dict, keys: tuple) -> "_Plan | None":
        top, dicts = [], []
        for k, v in rec.items():
            if k in _STEP_STRUCTURED:
                continue
            t = type(v)
            if t is float or t is int or t is bool:
                top.append(k)
            elif t is dict and k in _STEP_DICTS and all(type(x) in (float, int) for x in v.values()):
                dicts.append((k, tuple(v)))
            else:
                return None  # nulls, tags, unknown structures: the per-field path decides
        return cls(keys, top, dicts) if top or dicts else None

    def add(self, rec: dict, row: int) -> bool:
        try:
            vals = self.get_top(rec)
            for k, subs in self.dicts:
                d = rec[k]
                if tuple(d) != subs:
                    return False
                vals += tuple(d.values())
            packed = self.struct.pack(*vals)
        except (struct.error, TypeError, KeyError, OverflowError):
            return False
        self.buf.frombytes(packed)
        self.rows.append(row)
        return True


class _Template:
    """Bulk path for step lines that share one layout: every byte outside the number tokens.

    Engine logs repeat one layout for thousands of lines. A line's layout ("skeleton") is the line
    with the characters of number tokens (digits . + -) deleted; an exponent's e/E stays, so a key
    can never be confused with a number. A run of lines whose skeleton equals the template's is
    structurally identical to the template line, which was parsed with orjson and checked to be a
    clean step record (the case where the per-record path can leave no note). Such a run is read
    in one call to pandas' C CSV parser (`{}[]:` become commas, so every number is a field at a
    fixed position): no Python object per number. A run it cannot read exactly (an empty or
    malformed number token, a non-integral step or layer index) goes line by line instead.

    Known difference from the per-line path, tolerant mode only (strict mode never bulk-reads): a
    token that is not strict JSON but an unambiguous decimal (`+1`, `01`, `.5`, `5.`), or an
    integral float where an integer is expected (layer `2.0`), reads as that number.
    """

    __slots__ = ("skel", "usecols", "step_col", "phase", "plan", "scal", "n_layers", "idx_cols",
                 "stat_cols", "load_cols", "lens")

    @classmethod
    def build(cls, builder: "_Builder", rec: dict, line: bytes, skel: bytes) -> "_Template | None":
        if rec.get("event") != "step" or type(rec.get("step")) is not int:
            return None
        phase = rec.get("phase")
        if phase is not None and (type(phase) is not str or _SKEL_CHARS.intersection(phase)):
            return None
        if any(_SKEL_CHARS.intersection(k) for k in rec):
            return None
        plan = builder._find_plan(rec, tuple(rec))
        own = _Plan.build(rec, tuple(rec))  # the cached plan may come from a record with other value types
        if plan is None or own is None or own.names != plan.names:
            return None
        paths: list[tuple] = []
        n_layers, lens = 0, []
        for k, v in rec.items():
            t = type(v)
            if t is int or t is float:
                paths.append(("top", k))
            elif t is dict:  # a grad/aux group: the plan checked its values are numbers
                if any(_SKEL_CHARS.intersection(str(sub)) for sub in v):
                    return None
                paths += [("d", k, sub) for sub in v]
            elif k == "layers" and t is list:
                for i, lay in enumerate(v):
                    if type(lay) is not dict or len(lay) not in (_N_LAYER_FIELDS, _N_LAYER_FIELDS_ALIGNED) \
                            or not _LAYER_KEYS.issuperset(lay) or len(lay) != len(v[0]):
                        return None
                    for lk, lv in lay.items():
                        if lk == "head_load":
                            if type(lv) is not list or len(lv) > 65535 or \
                                    not {int, float}.issuperset(map(type, lv)):
                                return None
                            paths += [("h", i, h) for h in range(len(lv))]
                            lens.append(len(lv))
                        elif type(lv) is int or type(lv) is float:
                            if lk == "layer" and (type(lv) is not int or not 0 <= lv < 32768):
                                return None
                            paths.append(("l", i, lk))
                        else:
                            return None
                n_layers = len(v)
            elif not (t is str or t is bool or v is None):
                return None
        fields = line.translate(_CSV_TABLE, _CSV_DELETE).split(b",")
        num = [i for i, f in enumerate(fields) if _JSON_NUMBER.fullmatch(f)]
        if len(num) != len(paths):
            return None
        value = {("top", k): v for k, v in rec.items()}
        for k, v in rec.items():
            if type(v) is dict:
                value.update({("d", k, sub): x for sub, x in v.items()})
        for i, lay in enumerate(rec.get("layers") or ()):
            value.update({("l", i, lk): x for lk, x in lay.items() if lk != "head_load"})
            value.update({("h", i, h): x for h, x in enumerate(lay["head_load"])})
        if any(float(fields[i]) != value[p] for i, p in zip(num, paths)):
            return None  # the fields are not the numbers in text order: no bulk path for this layout
        col = {p: j for j, p in enumerate(paths)}
        self = cls()
        self.skel, self.usecols, self.plan = skel, num, plan
        self.step_col = col[("top", "step")]
        self.phase = phase
        self.scal = [(None, float(rec[k])) if type(rec[k]) is bool else (col[("top", k)], 0.0) for k in plan.top]
        self.scal += [(col[("d", k, sub)], 0.0) for k, subs in plan.dicts for sub in subs]
        self.n_layers = n_layers
        self.idx_cols = [col[("l", i, "layer")] for i in range(n_layers)]
        # -1: a stat this layout lacks (a log older than ALIGNMENT_STATS), read from a NaN column
        self.stat_cols = [col.get(("l", i, st), -1) for i in range(n_layers) for st in _LAYER_STATS]
        self.load_cols = [col[("h", i, h)] for i in range(n_layers) for h in range(lens[i])]
        self.lens = np.array(lens, np.uint16)
        return self


_LAYER_KEYS = frozenset(schema.LAYER_FIELDS + schema.ALIGNMENT_STATS)


class _Builder:
    """Accumulates records into typed columns; `finish()` turns them into a `Run`."""

    def __init__(self, path: Path, strict: bool):
        self.path = path
        self.strict = strict
        self.n_records = 0
        self.n_lines = 0
        self._notes: list[tuple[int | None, str]] = []
        self._bad: list[int] = []
        self._bad_first_reason: str | None = None
        self._wrong: dict[str, list[int]] = {}  # field -> line numbers with a wrong type
        self._unknown_events: dict[str, int] = {}
        # run-level
        self.meta: dict | None = None
        self.meta_line = 0
        self.end: dict | None = None
        self.resumes: list[dict] = []
        self._resume_lines: list[int] = []
        # steps
        self.n_steps = 0
        self.step_no = array("q")
        self.step_line = array("q")
        self.phase_code = array("b")
        self.phases: dict[str, int] = {}
        self.scalars: dict[str, array] = {}
        self._dict_names: dict[str, dict[str, str]] = {}
        self._plans: dict[tuple, _Plan | None] = {}
        self._plan: _Plan | None = None
        self.bulk = not strict  # strict mode reads every line the careful way
        self._templates: dict[bytes, _Template | None] = {}
        self._template_tries: dict[bytes, int] = {}
        self._last_template: _Template | None = None
        # layers: one row per (step record, layer entry); stats row-major in one float32 buffer
        self.lr_row = array("i")
        self.lr_layer = array("h")
        self.lr_stats = array("f")
        self.lr_label: array | None = None
        self.labels: dict[str, int] = {}
        # head load: flat values, one length per layer row
        self.hl_len = array("H")
        self.hl_val = array("f")
        self.hl_prob: array | None = None
        # evals / alerts (few records: plain lists are fine)
        self.evals: list[tuple] = []
        self.samples: list[tuple] = []
        self.alerts: list[tuple] = []

    # -- problems
    def note(self, line: int | None, text: str) -> None:
        self._notes.append((line, text))

    def bad_line(self, lineno: int, reason: str) -> None:
        if self.strict:
            raise _LineError(lineno, reason)
        if not self._bad:
            self._bad_first_reason = reason
        self._bad.append(lineno)

    def wrong_type(self, field: str, lineno: int, value: Any) -> None:
        if self.strict:
            raise _LineError(lineno, f"field '{field}' has wrong type {type(value).__name__} "
                                     f"({_one_line(repr(value), 40)})")
        self._wrong.setdefault(field, []).append(lineno)

    # -- dispatch
    def add(self, rec: Any, lineno: int) -> None:
        if type(rec) is not dict:
            self.bad_line(lineno, f"a JSON {type(rec).__name__}, not an object")
            return
        ev = rec.get("event")
        if ev == "step":
            self._add_step(rec, lineno)
        elif ev == "eval":
            self._add_eval(rec, lineno)
        elif ev == "alert":
            self._add_alert(rec, lineno)
        elif ev == "run_start":
            self._add_start(rec, lineno)
        elif ev == "resume":
            self.resumes.append(rec)
            self._resume_lines.append(lineno)
        elif ev == "run_end":
            self.end = rec
        elif type(ev) is str:
            self._unknown_events[ev] = self._unknown_events.get(ev, 0) + 1
        else:
            self.bad_line(lineno, "record without an 'event' kind")
            return
        self.n_records += 1

    # -- bulk path (see _Template)
    def segments(self, batch: list[bytes]) -> list[tuple[int, int, _Template]]:
        """Runs of at least _BULK_MIN consecutive lines of `batch` that match one template."""
        skels = [line.translate(None, _SKEL_DELETE) for line in batch]
        last = self._last_template
        if last is not None and skels.count(last.skel) == len(skels):
            return [(0, len(skels), last)]
        templates = self._templates
        out, start, cur = [], 0, None
        for i, sk in enumerate(skels):
            t = templates.get(sk, _MISSING)
            if t is _MISSING:
                t = self._new_template(batch[i], sk)
            if t is not cur:
                if cur is not None and i - start >= _BULK_MIN:
                    out.append((start, i, cur))
                cur, start = t, i
        if cur is not None and len(skels) - start >= _BULK_MIN:
            out.append((start, len(skels), cur))
        return out

    def _new_template(self, line: bytes, skel: bytes) -> "_Template | None":
        if len(self._template_tries) >= _MAX_TEMPLATES or not line.startswith(b"{"):
            return None
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            rec = None
        t = _Template.build(self, rec, line, skel) if type(rec) is dict else None
        # A layout is given up only after 3 lines of it failed: one bad line must not decide for the rest.
        tries = self._template_tries[skel] = self._template_tries.get(skel, 0) + 1
        if t is not None or tries >= 3:
            self._templates[skel] = t
        return t

    def add_block(self, block: bytes, line0: int) -> int:
        """Read a whole block whose every line has the layout of the last bulk-read run; 0: it has not."""
        t = self._last_template
        if t is None:
            return 0
        # The template's skeleton holds exactly one newline, so a match also counts the lines.
        skel = block.translate(None, _SKEL_DELETE)
        n = len(skel) // len(t.skel)
        if skel != t.skel * n:
            return 0
        return n if self.add_bulk(block, n, t, line0) else 0

    def add_bulk(self, text: bytes, n: int, t: _Template, line0: int) -> bool:
        """Read `n` lines (`text`) that match `t`, the first one numbered `line0`; False: nothing was added."""
        if self.lr_label is not None or self.hl_prob is not None:
            return False  # rows would need label/prob placeholders: the per-line path keeps them aligned
        try:
            m = pd.read_csv(io.BytesIO(text.translate(_CSV_TABLE, _CSV_DELETE)), header=None,
                            usecols=t.usecols, dtype=np.float64, engine="c", quoting=csv.QUOTE_NONE,
                            na_filter=False, skip_blank_lines=False).to_numpy()
        except (ValueError, pd.errors.ParserError, OverflowError):
            return False
        if m.shape != (n, len(t.usecols)) or np.isnan(m).any():
            return False  # an empty token (",,") reads as NaN; a missing line shifts the shape
        steps = m[:, t.step_col]
        if not (np.all(np.trunc(steps) == steps) and np.all(np.abs(steps) < 2.0**63)):
            return False
        ids = m[:, t.idx_cols]
        if not (np.all(np.trunc(ids) == ids) and np.all((ids >= 0) & (ids < 32768))):
            return False
        self._last_template = t
        row0 = self.n_steps
        self.step_no.frombytes(steps.astype(np.int64).tobytes())
        self.step_line.frombytes(np.arange(line0, line0 + n, dtype=np.int64).tobytes())
        code = -1 if t.phase is None else self.phases.setdefault(t.phase, len(self.phases))
        self.phase_code.frombytes(np.full(n, code, np.int8).tobytes())
        plan = t.plan
        mat = np.empty((n, len(t.scal)), np.float64)
        for j, (c, const) in enumerate(t.scal):
            mat[:, j] = const if c is None else m[:, c]
        plan.buf.frombytes(mat.tobytes())
        plan.rows.frombytes(np.arange(row0, row0 + n, dtype=np.int32).tobytes())
        if t.n_layers:
            self.lr_row.frombytes(np.repeat(np.arange(row0, row0 + n, dtype=np.int32), t.n_layers).tobytes())
            self.lr_layer.frombytes(ids.astype(np.int16).tobytes())
            src = np.hstack([m, np.full((n, 1), np.nan)]) if -1 in t.stat_cols else m
            self.lr_stats.frombytes(src[:, t.stat_cols].astype(np.float32).tobytes())
            self.hl_len.frombytes(np.tile(t.lens, n).tobytes())
            self.hl_val.frombytes(m[:, t.load_cols].astype(np.float32).tobytes())
        self.n_steps += n
        self.n_records += n
        return True

    def _add_start(self, rec: dict, lineno: int) -> None:
        version = rec.get("schema_version")
        if version is None:
            self.note(lineno, f"run_start has no schema_version; read as version {schema.SCHEMA_VERSION}")
        elif type(version) is not int or version not in schema.SUPPORTED_SCHEMA_VERSIONS:
            raise _LineError(lineno, f"unsupported schema_version {_one_line(repr(version), 30)} (this tool "
                                     f"reads {', '.join(map(str, schema.SUPPORTED_SCHEMA_VERSIONS))}); "
                                     f"upgrade moh to read it")
        if self.meta is not None:
            self._second_start(rec, lineno, self.meta_line)
            return
        meta = dict(rec)
        sem = meta.get("semantics")
        meta["semantics"] = {**schema.DEFAULT_SEMANTICS, **(sem if isinstance(sem, dict) else {})}
        if not isinstance(meta.get("model"), dict):
            meta["model"] = {}
        self.meta = meta
        self.meta_line = lineno

    def _second_start(self, rec: dict, lineno: int, first_line: int) -> None:
        old, version = (self.meta or {}).get("schema_version"), rec.get("schema_version")
        if version is not None and old is not None and old != version:
            raise _LineError(lineno, f"mixed schema versions ({old} at line {first_line}, {version} here)")
        self.note(lineno, f"a second run_start (logs concatenated?); metadata kept from line {first_line}")

    def _column(self, name: str, row: int) -> array:
        col = self.scalars.get(name)
        if col is None:
            col = self.scalars[name] = array("d", [_NAN]) * row
        elif len(col) < row:
            col.extend(array("d", [_NAN]) * (row - len(col)))
        return col

    def _add_step(self, rec: dict, lineno: int) -> None:
        step = rec.get("step")
        if type(step) is not int:
            if type(step) is float and step.is_integer():
                step = int(step)
            else:
                self.bad_line(lineno, f"step record with step={_one_line(repr(step), 30)}, not an integer")
                return
        try:
            self.step_no.append(step)
        except OverflowError:  # beyond int64: a corrupted or hostile line, not a step number
            self.bad_line(lineno, f"step record with step={_one_line(repr(step), 30)}, out of range")
            return
        row = self.n_steps
        self.n_steps += 1
        self.step_line.append(lineno)
        phase = rec.get("phase")
        if phase is None:
            self.phase_code.append(-1)
        else:
            code = self.phases.get(phase) if type(phase) is str else None
            if code is None:
                if type(phase) is not str:
                    self.wrong_type("phase", lineno, phase)
                    code = -1
                else:
                    code = self.phases[phase] = len(self.phases)
            self.phase_code.append(code)

        sig = tuple(rec)
        plan = self._plan
        if plan is None or plan.keys != sig:
            plan = self._plan = self._find_plan(rec, sig)
        if plan is None or not plan.add(rec, row):
            self._add_scalars_slow(rec, row, lineno)

        layers = rec.get("layers")
        if layers is None:
            return
        if type(layers) is not list:
            self.wrong_type("layers", lineno, layers)
            return
        if not self._add_layers_fast(layers, row):
            self._add_layers_slow(layers, row, lineno)

    def _add_scalars_slow(self, rec: dict, row: int, lineno: int) -> None:
        scalars = self.scalars
        for k, v in rec.items():
            t = type(v)
            if t is float or t is int:
                col = scalars.get(k)
                if col is not None and len(col) == row:  # the common case, kept inline for speed
                    col.append(v)
                elif k not in _STEP_STRUCTURED:
                    self._column(k, row).append(v)
            elif t is dict:
                names = self._dict_names.get(k)
                if names is None:
                    if k not in _STEP_DICTS:
                        continue
                    names = self._dict_names[k] = {}
                for sub, sv in v.items():
                    name = names.get(sub)
                    if name is None:
                        name = names[sub] = _STEP_DICTS[k] + str(sub)
                    col = scalars.get(name)
                    st = type(sv)
                    if (st is float or st is int) and col is not None and len(col) == row:
                        col.append(sv)
                        continue
                    x = _num(sv)
                    if x is None:
                        self.wrong_type(name, lineno, sv)
                        x = _NAN
                    self._column(name, row).append(x)
            elif k not in _STEP_STRUCTURED:
                x = _num(v)
                if x is None:
                    if k in _STEP_NUMERIC or k in _STEP_DICTS:
                        self.wrong_type(k, lineno, v)
                        self._column(k, row).append(_NAN)
                    continue
                if v is None and k not in scalars and k not in _STEP_NUMERIC:
                    continue  # unknown null field: nothing to make a column of
                self._column(k, row).append(x)

    def _find_plan(self, rec: dict, sig: tuple) -> "_Plan | None":
        if sig in self._plans:
            return self._plans[sig]
        plan = _Plan.build(rec, sig) if len(self._plans) < _MAX_PLANS else None
        self._plans[sig] = plan
        return plan

    def _flush_plans(self) -> None:
        """Scatter the row-major buffers of the fast path into the per-column arrays."""
        n = self.n_steps
        for plan in self._plans.values():
            if plan is None or not len(plan.rows):
                continue
            mat = np.frombuffer(plan.buf, np.float64).reshape(-1, len(plan.names))
            rows = np.frombuffer(plan.rows, np.int32)
            for j, name in enumerate(plan.names):
                col = self._column(name, n)
                np.frombuffer(col, np.float64)[rows] = mat[:, j]
            plan.buf, plan.rows = array("d"), array("i")

    def _add_layers_fast(self, layers: list, row: int) -> bool:
        """All layers complete and well typed: append them with C-level calls only. False: not done."""
        if not layers:
            return True
        n_keys = _N_LAYER_FIELDS_ALIGNED
        try:
            idx = list(map(_GET_LAYER, layers))
            loads = list(map(_GET_LOAD, layers))
            try:
                stat_rows = list(map(_GET_STATS, layers))
            except KeyError:  # written before ALIGNMENT_STATS: those read as null
                stat_rows = [r + _NO_ALIGNMENT for r in map(_GET_REQUIRED_STATS, layers)]
                n_keys = _N_LAYER_FIELDS
        except (KeyError, TypeError):
            return False
        n_fields = list(map(len, layers))
        if self.lr_label is not None or self.hl_prob is not None or min(n_fields) != n_keys \
                or max(n_fields) != n_keys:
            return False  # optional keys (label, prob_mean) or unknown ones: per-layer path
        try:
            stats = _packer(len(stat_rows) * _N_STATS).pack(*_chain(stat_rows))
            flat_load = list(_chain(loads))  # TypeError when a head_load is not a list
            load_bytes = _packer(len(flat_load)).pack(*flat_load)
            idx_bytes = _pack_layers(len(idx)).pack(*idx)
            lens = list(map(len, loads))
        except (TypeError, OverflowError, ValueError, struct.error):
            return False
        if max(lens) > 65535:
            return False
        self.lr_layer.frombytes(idx_bytes)
        self.lr_stats.frombytes(stats)
        self.hl_val.frombytes(load_bytes)
        self.hl_len.fromlist(lens)
        self.lr_row.extend(array("i", [row]) * len(layers))
        return True

    def _add_layers_slow(self, layers: list, row: int, lineno: int) -> None:
        stats = self.lr_stats
        for i, lay in enumerate(layers):
            if type(lay) is not dict:
                self.wrong_type(f"layers[{i}]", lineno, lay)
                continue
            idx = lay.get("layer", i)
            if type(idx) is not int or not 0 <= idx < 32768:
                self.wrong_type(f"layers[{i}].layer", lineno, idx)
                idx = i
            self.lr_row.append(row)
            self.lr_layer.append(idx)
            vals = [lay.get(k) for k in _LAYER_STATS]
            n0 = len(stats)
            try:
                stats.extend(vals)
            except (TypeError, OverflowError):
                del stats[n0:]
                stats.extend(self._clean(vals, _LAYER_STATS, i, lineno))
            label = lay.get("label")
            if label is not None or self.lr_label is not None:
                self._add_label(label, len(self.lr_row) - 1)
            self._add_heads(lay, i, lineno)

    def _clean(self, vals: list, names: Iterable[str], i: int, lineno: int) -> list[float]:
        out = []
        for name, v in zip(names, vals):
            x = _num(v)
            if x is None:
                self.wrong_type(f"layers[{i}].{name}", lineno, v)
                x = _NAN
            out.append(x)
        return out

    def _add_label(self, label: Any, lr_index: int) -> None:
        if self.lr_label is None:
            self.lr_label = array("h", [-1]) * lr_index
        if type(label) is not str:
            self.lr_label.append(-1)
            return
        code = self.labels.get(label)
        if code is None:
            code = self.labels[label] = len(self.labels)
        self.lr_label.append(code)

    def _add_heads(self, lay: dict, i: int, lineno: int) -> None:
        load = lay.get("head_load")
        n0 = len(self.hl_val)
        if load is None:
            n = 0
        elif type(load) is not list:
            self.wrong_type(f"layers[{i}].head_load", lineno, load)
            n = 0
        elif len(load) > 65535:
            self.wrong_type(f"layers[{i}].head_load", lineno, f"<list of {len(load)}>")
            n = 0
        else:
            n = len(load)
            try:
                self.hl_val.extend(load)
            except (TypeError, OverflowError):
                del self.hl_val[n0:]
                self.hl_val.extend(self._clean(load, (f"head_load[{h}]" for h in range(n)), i, lineno))
        self.hl_len.append(n)
        prob = lay.get("prob_mean")
        if prob is None and self.hl_prob is None:
            return
        if self.hl_prob is None:
            self.hl_prob = array("f", [_NAN]) * n0
        if type(prob) is list and len(prob) == n:
            m0 = len(self.hl_prob)
            try:
                self.hl_prob.extend(prob)
            except (TypeError, OverflowError):
                del self.hl_prob[m0:]
                self.hl_prob.extend(self._clean(prob, (f"prob_mean[{h}]" for h in range(n)), i, lineno))
        else:
            if prob is not None:
                self.wrong_type(f"layers[{i}].prob_mean", lineno, prob)
            self.hl_prob.extend(array("f", [_NAN]) * n)

    def _add_eval(self, rec: dict, lineno: int) -> None:
        step = rec.get("step")
        if type(step) is not int:
            self.bad_line(lineno, f"eval record with step={_one_line(repr(step), 30)}, not an integer")
            return
        phase = rec.get("phase")
        vals = []
        for k in ("loss", "exact_match"):
            x = _num(rec.get(k))
            if x is None:
                self.wrong_type(f"eval.{k}", lineno, rec.get(k))
                x = _NAN
            vals.append(float(x))
        samples = rec.get("samples")
        if samples is not None and type(samples) is not list:
            self.wrong_type("eval.samples", lineno, samples)
            samples = None
        index = len(self.evals)
        self.evals.append((index, step, phase if type(phase) is str else None, vals[0], vals[1],
                           len(samples) if samples else 0))
        for s in samples or ():
            if type(s) is not dict:
                continue
            m = s.get("match")
            self.samples.append((index, step, phase if type(phase) is str else None,
                                 _text(s.get("prompt")), _text(s.get("expected")),
                                 _text(s.get("output")), bool(m) if m is not None else None))

    def _add_alert(self, rec: dict, lineno: int) -> None:
        step = rec.get("step")
        self.alerts.append((step if type(step) is int else None, _text(rec.get("level")),
                            _text(rec.get("code")), _text(rec.get("message"))))

    # -- assembly
    def merge(self, o: "_Builder", off: int) -> None:
        """Append the builder of the next chunk of the file, whose line numbers start after `off`."""
        self._flush_plans()
        o._flush_plans()
        self.n_records += o.n_records
        self._notes += [(None if ln is None else ln + off, t) for ln, t in o._notes]
        if o._bad and not self._bad:
            self._bad_first_reason = o._bad_first_reason
        self._bad += [ln + off for ln in o._bad]
        for fld, lines in o._wrong.items():
            self._wrong.setdefault(fld, []).extend(ln + off for ln in lines)
        for ev, n in o._unknown_events.items():
            self._unknown_events[ev] = self._unknown_events.get(ev, 0) + n
        if o.meta is not None:
            if self.meta is None:
                self.meta, self.meta_line = o.meta, o.meta_line + off
            else:
                self._second_start(o.meta, o.meta_line + off, self.meta_line)
        if o.end is not None:
            self.end = o.end
        self.resumes += o.resumes
        self._resume_lines += [ln + off for ln in o._resume_lines]
        # steps
        row0, n = self.n_steps, o.n_steps
        self.step_no.extend(o.step_no)
        self.step_line.frombytes((np.frombuffer(o.step_line, np.int64) + off).tobytes() if n else b"")
        remap = np.array([self.phases.setdefault(ph, len(self.phases)) for ph in o.phases] + [-1], np.int8)
        if n:
            self.phase_code.frombytes(remap[np.frombuffer(o.phase_code, np.int8)].tobytes())
        for name, col in o.scalars.items():
            if len(col) < n:
                col.extend(array("d", [_NAN]) * (n - len(col)))
            self._column(name, row0).extend(col)
        self.n_steps += n
        # layers and heads
        lr0, hv0 = len(self.lr_row), len(self.hl_val)
        if len(o.lr_row):
            self.lr_row.frombytes((np.frombuffer(o.lr_row, np.int32) + row0).astype(np.int32).tobytes())
        self.lr_layer.extend(o.lr_layer)
        self.lr_stats.extend(o.lr_stats)
        if o.lr_label is not None or self.lr_label is not None:
            if self.lr_label is None:
                self.lr_label = array("h", [-1]) * lr0
            if o.lr_label is None:
                self.lr_label.extend(array("h", [-1]) * len(o.lr_row))
            else:
                lmap = np.array([self.labels.setdefault(lb, len(self.labels)) for lb in o.labels] + [-1], np.int16)
                self.lr_label.frombytes(lmap[np.frombuffer(o.lr_label, np.int16)].tobytes())
        self.hl_len.extend(o.hl_len)
        self.hl_val.extend(o.hl_val)
        if o.hl_prob is not None or self.hl_prob is not None:
            if self.hl_prob is None:
                self.hl_prob = array("f", [_NAN]) * hv0
            self.hl_prob.extend(o.hl_prob if o.hl_prob is not None else array("f", [_NAN]) * len(o.hl_val))
        # evals, samples, alerts
        k0 = len(self.evals)
        self.evals += [(i + k0, *rest) for i, *rest in o.evals]
        self.samples += [(i + k0, *rest) for i, *rest in o.samples]
        self.alerts += o.alerts

    def finish(self) -> Run:
        path = self.path
        self._flush_plans()
        if self.n_records == 0:
            if self._bad:
                raise LoadError(f"{path}:{self._bad[0]}: no valid records ({len(self._bad)} bad line(s); "
                                f"first: {self._bad_first_reason})")
            raise LoadError(f"{path}: no telemetry records")
        if self._bad:
            self.note(None, f"{len(self._bad)} bad line(s) skipped (line {_lines_list(self._bad, len(self._bad))}); "
                            f"first problem: {self._bad_first_reason}")
        for fld, lines in self._wrong.items():
            self.note(None, f"field '{fld}' has a wrong type on {len(lines)} line(s) "
                            f"(line {_lines_list(lines, len(lines))}); read as NaN")
        for ev, n in self._unknown_events.items():
            self.note(None, f"{n} record(s) of unknown event kind {_one_line(repr(ev), 40)} ignored")
        if self.meta is None:
            self.note(None, "no run_start record; model and config unknown")

        steps, keep = self._steps_frame()
        layers, head_load = self._layer_frames(steps, keep)
        evals, samples = self._eval_frames()
        alerts = pd.DataFrame(self.alerts, columns=["step", "level", "code", "message"])
        if len(alerts):
            alerts["step"] = alerts["step"].astype("Int64")
            alerts = alerts.sort_values("step", kind="stable", na_position="first").reset_index(drop=True)
        notes = [f"{path}:{ln}: {t}" if ln is not None else f"{path}: {t}" for ln, t in self._notes]
        return Run(path=path, meta=self.meta or {}, steps=steps, layers=layers, head_load=head_load,
                   evals=evals, samples=samples, alerts=alerts, end=self.end, resumes=self.resumes,
                   notes=notes)

    def _phase_categorical(self, codes: np.ndarray) -> pd.Categorical:
        cats = list(self.phases)
        return pd.Categorical.from_codes(codes.astype(np.int8, copy=False), categories=cats)

    def _steps_frame(self) -> tuple[pd.DataFrame, np.ndarray]:
        n = self.n_steps
        step = np.frombuffer(self.step_no, dtype=np.int64) if n else np.zeros(0, np.int64)
        # last write wins: the last occurrence of each step number, in step order
        if n and np.all(step[1:] > step[:-1]):
            keep = np.arange(n)
        else:
            uniq, first_in_reversed = np.unique(step[::-1], return_index=True)
            keep = (n - 1 - first_in_reversed).astype(np.int64)
            self._note_restarts(step)
        cols: dict[str, Any] = {"step": step[keep]}
        if self.phases or n == 0:
            codes = np.frombuffer(self.phase_code, dtype=np.int8) if n else np.zeros(0, np.int8)
            cols["phase"] = self._phase_categorical(codes[keep])
        for name in sorted(self.scalars, key=_column_rank):
            col = self.scalars[name]
            if len(col) < n:
                col.extend(array("d", [_NAN]) * (n - len(col)))
            values = np.frombuffer(col, dtype=np.float64)[keep]
            if name == "skipped":
                cols[name] = np.nan_to_num(values, nan=0.0) != 0
            else:
                cols[name] = values
        return pd.DataFrame(cols, copy=False), keep

    def _note_restarts(self, step: np.ndarray) -> None:
        lines = np.frombuffer(self.step_line, dtype=np.int64)
        back = np.nonzero(step[1:] <= step[:-1])[0] + 1  # rows where the step number goes back
        n_dup = len(step) - len(np.unique(step))
        resume_lines = self._resume_lines
        for r in back[:5]:
            line = int(lines[r])
            after_resume = any(self.step_line[r - 1] < rl < line for rl in resume_lines)
            how = "after a resume record" if after_resume else "without a resume record"
            self.note(line, f"steps restart at {int(step[r])} (previous {int(step[r - 1])}) "
                            f"{how}; overlapping steps resolved by step, last write wins")
        if len(back) > 5:
            self.note(None, f"{len(back)} step restarts in all")
        if n_dup:
            self.note(None, f"{n_dup} step record(s) superseded by a later record of the same step")

    def _layer_frames(self, steps: pd.DataFrame, keep: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
        n_lr = len(self.lr_row)
        stats = np.frombuffer(self.lr_stats, dtype=np.float32).reshape(n_lr, _N_STATS) if n_lr else \
            np.zeros((0, _N_STATS), np.float32)
        lr_row = np.frombuffer(self.lr_row, dtype=np.int32) if n_lr else np.zeros(0, np.int32)
        lr_layer = np.frombuffer(self.lr_layer, dtype=np.int16) if n_lr else np.zeros(0, np.int16)
        rank = np.full(self.n_steps, -1, dtype=np.int64)
        rank[keep] = np.arange(len(keep))
        lr_rank = rank[lr_row]
        order: np.ndarray | None = None  # None: layer rows already valid and in (step, layer) order
        width = int(lr_layer.max()) + 2 if n_lr else 1
        sort_key = lr_rank * width + lr_layer
        if n_lr and (lr_rank.min() < 0 or np.any(sort_key[1:] < sort_key[:-1])):
            valid = np.nonzero(lr_rank >= 0)[0]
            order = valid[np.argsort(sort_key[valid], kind="stable")]
        pick = (lambda a: a) if order is None else (lambda a: a[order])
        step_all = steps["step"].to_numpy()
        lr_step = step_all[pick(lr_rank)].astype(np.int32)
        cols: dict[str, Any] = {"step": lr_step}
        if "phase" in steps:
            codes = steps["phase"].cat.codes.to_numpy()[pick(lr_rank)]
            cols["phase"] = self._phase_categorical(codes)
        cols["layer"] = pick(lr_layer)
        if self.lr_label is not None:
            lab = np.frombuffer(self.lr_label, dtype=np.int16)
            cols["label"] = pd.Categorical.from_codes(pick(lab), categories=list(self.labels))
        for j, name in enumerate(_LAYER_STATS):  # strided views: a transposing copy costs more than it saves
            cols[name] = pick(stats[:, j])
        layers = pd.DataFrame(cols, copy=False)

        # head load: flat values, hl_len[i] of them per layer row i
        lens = np.frombuffer(self.hl_len, dtype=np.uint16).astype(np.int64) if n_lr else np.zeros(0, np.int64)
        vals = np.frombuffer(self.hl_val, dtype=np.float32) if len(self.hl_val) else np.zeros(0, np.float32)
        prob = np.frombuffer(self.hl_prob, dtype=np.float32) if self.hl_prob is not None and len(self.hl_prob) else None
        rows = np.arange(n_lr) if order is None else order
        sel_lens = lens[rows]
        total = int(sel_lens.sum())
        uniform = n_lr > 0 and lens.min() == lens.max()
        if uniform:
            h = int(lens[0])
            if order is None:
                val_idx = None
            else:
                val_idx = (order[:, None] * h + np.arange(h)[None, :]).ravel()
            head = np.tile(np.arange(h, dtype=np.int16), len(rows))
        else:
            offsets = np.concatenate([[0], np.cumsum(lens)[:-1]]) if n_lr else np.zeros(0, np.int64)
            starts = np.repeat(offsets[rows], sel_lens)
            within = np.arange(total) - np.repeat(np.cumsum(sel_lens) - sel_lens, sel_lens)
            val_idx = starts + within
            head = within.astype(np.int16)
        hcols: dict[str, Any] = {
            "step": np.repeat(lr_step, sel_lens) if not uniform else np.repeat(lr_step, int(lens[0])),
            "layer": np.repeat(cols["layer"], sel_lens) if not uniform else np.repeat(cols["layer"], int(lens[0])),
            "head": head,
            "load": vals if val_idx is None else vals[val_idx],
        }
        if prob is not None:
            hcols["prob"] = prob if val_idx is None else prob[val_idx]
        head_load = pd.DataFrame(hcols, copy=False)
        return layers, head_load

    def _eval_frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        ev = pd.DataFrame(self.evals, columns=["_i", "step", "phase", "loss", "exact_match", "n_samples"])
        sm = pd.DataFrame(self.samples, columns=["_i", "step", "phase", "prompt", "expected", "output", "match"])
        if len(ev):
            before = len(ev)
            ev = ev.drop_duplicates(["step", "phase"], keep="last")
            if len(ev) < before:
                self.note(None, f"{before - len(ev)} eval record(s) superseded by a later eval of "
                                f"the same step and phase")
                sm = sm[sm["_i"].isin(ev["_i"])]
            ev = ev.sort_values("step", kind="stable")
            sm = sm.sort_values("step", kind="stable")
        ev = ev.drop(columns="_i").reset_index(drop=True)
        sm = sm.drop(columns="_i").reset_index(drop=True)
        ev["n_samples"] = ev["n_samples"].astype(np.int64)
        return ev, sm


_COLUMN_ORDER = {name: i for i, name in enumerate(
    ["epoch", "time", "elapsed", "loss", "lm_loss", "lr", "grad_norm", "grad_norm_clipped", "tokens",
     "tokens_per_s", "skipped"]
    + [f"grad.{g}" for g in schema.GRAD_GROUPS] + [f"aux.{t}" for t in schema.AUX_TERMS]
    + [f"aux_weighted.{t}" for t in schema.AUX_TERMS])}


def _column_rank(name: str) -> tuple:
    """Known step columns in schema order, then the rest by name (independent of record order)."""
    return (_COLUMN_ORDER.get(name, len(_COLUMN_ORDER)), name)


def _text(v: Any) -> str | None:
    if v is None or type(v) is str:
        return v
    return str(v)


# ---- entry points ----------------------------------------------------------------------------


def load_records(records: Iterable[dict], path: str | os.PathLike, *, strict: bool = False,
                 notes: Iterable[str] = ()) -> Run:
    """Build a `Run` from schema records (e.g. converted from another log format).

    The same frame builder as `load_run`, so imported logs and native logs look alike. The
    record number (1-based) stands in for the line number in notes and errors.
    """
    p = Path(path)
    builder = _Builder(p, strict)
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
        builder = _Builder(p, strict)
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
                builder.merge(part, off)
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
