"""The parallel driver: a large file is cut into line-aligned byte ranges, each parsed into its own
builder in a forked process (this one takes the first), and the builders are merged in order."""

from __future__ import annotations

from array import array
from pathlib import Path

import numpy as np

from .fast import Builder
from .reference import _NAN, _LineError
from .scan import _scan
from .source import _chunk_blocks

_PARALLEL_MIN_BYTES = 64 << 20  # below this one process is faster than starting workers
# Sending a worker's columns back (pickle, pipe, unpickle) took about 0.45 s against 3.3 s of
# parsing for half of a 683 MB log: the first chunk is that much larger (bench/bench_analysis.py).
_FIRST_CHUNK_EXTRA = 0.12
_MAX_WORKERS = 8


def _load_chunk(path: Path, start: int, end: int, strict: bool, is_last: bool) -> Builder | _LineError:
    """Worker: parse bytes [start, end) of `path` (line-aligned) into a builder."""
    builder = Builder(path, strict)
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


def _parallel_builders(path: Path, strict: bool, workers: int) -> list[Builder | _LineError] | None:
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


# -- assembly
def merge(self: Builder, o: Builder, off: int) -> None:
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
    for k, n in o._left_out.items():
        self._left_out[k] = self._left_out.get(k, 0) + n
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
