"""The fast paths behind the reference path, each falling back to it for anything it cannot
read exactly: a per-layout plan for step scalars (`_Plan`), one C-level call for complete layer
entries, and the bulk path that reads runs of same-layout step lines as CSV (`_Template`).

Why: a 200,000-step log of an 8-layer, 8-head model holds ~30 million numbers; a Python object
per number costs more than everything else together. Engine logs repeat one layout for
thousands of lines, so pandas' C CSV parser reads them in one call with no Python object per
number. tests/analyze/test_loader_bulk.py checks the frames equal the reference path's.
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import math
import operator
import re
import struct
from array import array
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from moh import schema

from .reference import _LAYER_STATS, _N_STATS, _STEP_DICTS, _STEP_STRUCTURED, ReferenceBuilder

_GET_STATS = operator.itemgetter(*_LAYER_STATS)
_GET_LAYER = operator.itemgetter("layer")
_GET_LOAD = operator.itemgetter("head_load")
# A layer entry with exactly these keys (the index, the loads and every numeric stat) takes the
# fast paths; any other key (label, prob_mean, heads_hist, unknown ones) goes field by field.
_FAST_LAYER_KEYS = frozenset(("layer", "head_load") + _LAYER_STATS)
_N_LAYER_FIELDS = len(_FAST_LAYER_KEYS)
# A log written before the optional numeric stats (schema.ALIGNMENT_STATS) lacks them: it takes
# the fast paths too, those columns NaN (as the per-layer path reads an absent key).
_REQUIRED_STATS = tuple(st for st in _LAYER_STATS if st in schema.LAYER_STATS)
_OPTIONAL_STATS = _LAYER_STATS[len(_REQUIRED_STATS):]
assert _LAYER_STATS[: len(_REQUIRED_STATS)] == _REQUIRED_STATS, "optional layer columns come last"
_GET_REQUIRED_STATS = operator.itemgetter(*_REQUIRED_STATS)
_NO_OPTIONAL = (math.nan,) * len(_OPTIONAL_STATS)
_N_LAYER_FIELDS_REQUIRED = _N_LAYER_FIELDS - len(_OPTIONAL_STATS)
_chain = itertools.chain.from_iterable


@functools.lru_cache(maxsize=256)
def _packer(n: int) -> struct.Struct:
    """Packs n Python numbers as float32: far faster than array.extend on a generic iterable."""
    return struct.Struct(f"={n}f")


@functools.lru_cache(maxsize=256)
def _pack_layers(n: int) -> struct.Struct:
    return struct.Struct(f"={n}h")


# Bulk path (see `_Template`): runs of step lines with one layout are parsed as CSV by pandas' C reader.
# Bulk path (see `_Template`): runs of step lines with one layout are parsed as CSV by pandas' C reader.
_BULK_LINES = 8192  # lines checked together for runs of one layout; 0: line by line only
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
_MAX_PLANS = 16  # distinct step-record key layouts given a fast path
_LAYER_KEYS = _FAST_LAYER_KEYS


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
    def build(cls, builder: "Builder", rec: dict, line: bytes, skel: bytes) -> "_Template | None":
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
                    if type(lay) is not dict or len(lay) not in (_N_LAYER_FIELDS, _N_LAYER_FIELDS_REQUIRED) \
                            or len(lay) != len(v[0]) or not _LAYER_KEYS.issuperset(lay):
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
        # -1: a stat this layout lacks (an older log), read from a NaN column
        self.stat_cols = [col.get(("l", i, st), -1) for i in range(n_layers) for st in _LAYER_STATS]
        self.load_cols = [col[("h", i, h)] for i in range(n_layers) for h in range(lens[i])]
        self.lens = np.array(lens, np.uint16)
        return self


class Builder(ReferenceBuilder):
    """The reference builder with the fast paths plugged in."""

    def __init__(self, path: Path, strict: bool):
        super().__init__(path, strict)
        self._plans: dict[tuple, _Plan | None] = {}
        self._plan: _Plan | None = None
        self.bulk = not strict  # strict mode reads every line the careful way
        self._templates: dict[bytes, _Template | None] = {}
        self._template_tries: dict[bytes, int] = {}
        self._last_template: _Template | None = None

    def _add_scalars_fast(self, rec: dict, row: int) -> bool:
        sig = tuple(rec)
        plan = self._plan
        if plan is None or plan.keys != sig:
            plan = self._plan = self._find_plan(rec, sig)
        return plan is not None and plan.add(rec, row)

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
        n_keys = _N_LAYER_FIELDS
        try:
            idx = list(map(_GET_LAYER, layers))
            loads = list(map(_GET_LOAD, layers))
            try:
                stat_rows = list(map(_GET_STATS, layers))
            except KeyError:  # written before the optional stats: those read as NaN
                stat_rows = [r + _NO_OPTIONAL for r in map(_GET_REQUIRED_STATS, layers)]
                n_keys = _N_LAYER_FIELDS_REQUIRED
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
