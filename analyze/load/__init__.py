"""Load a telemetry log (`run.jsonl`, `.jsonl.gz`, or a reference Rust trainer text log) into a `Run`.

Why it is written this way: a 200,000-step log of an 8-layer, 8-head model holds ~30 million numbers.
Building a dict or DataFrame per record, or keeping the parsed records, costs gigabytes. Instead each
record is parsed with orjson and its numbers are appended straight into typed `array.array` columns
(float32 for the per-layer and per-head statistics, where 7 significant digits are plenty); the frames
are assembled once at the end, without a copy where numpy allows. Runs of step lines that repeat one
layout (every engine log) skip even that: they are checked against a template and read by pandas' C CSV
parser in one call, with no Python object per number (`fast._Template`; anything else goes line by line).

Tolerance (issue 3 item 1, issue 5 item 5): a truncated last line is skipped with a note; other bad
lines are counted and noted with their line numbers; wrong types in known fields read as NaN with a
note; with `strict=True` each of those is a `LoadError` instead. Bare `NaN`/`Infinity` tokens (written
by other tools) and the schema's string tags both read as float NaN/inf. A resumed log whose steps
restart or overlap is resolved by step, last write wins, and said so in `Run.notes`.

The package, one idea per module:
    source      file I/O: open (gzip too), sniff the format, line-aligned blocks; LoadError
    reference   the reference path: one record at a time into typed columns; defines the semantics
    fast        the fast paths behind it (per-layout plans, whole-layer packing, the CSV bulk path),
                each falling back to the reference path; tests/analyze/test_loader_bulk.py checks
                they give the reference path's frames
    scan        the line scanner: bulk runs to the fast path, every other line to the reference path
    parallel    the parallel driver: line-aligned chunks parsed in forked processes, then merged
    frames      frame assembly: columns -> the Run's DataFrames, with notes
    api         load_run / load_records
"""

from .api import INPUT_FORMATS, load_records, load_run
from .source import LoadError, sniff_format

__all__ = ["INPUT_FORMATS", "LoadError", "load_records", "load_run", "sniff_format"]
