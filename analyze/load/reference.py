"""The reference path: one parsed record at a time into typed columns. It defines what every
field means and how bad values are treated; the fast paths (`fast.Builder`) must give the same
columns (tests/analyze/test_loader_bulk.py compares them on the same files) and fall back to it
for anything they do not handle exactly.

Columns: float32 `array.array`s for the per-layer and per-head statistics (7 significant digits
are plenty; 30 million numbers on a 200k-step log), float64 for step scalars; frames are built
once at the end (`frames.FrameAssembly`).
"""

from __future__ import annotations

from array import array
from pathlib import Path
from typing import Any, Iterable

from moh import schema

from .frames import _LAYER_STATS, _N_STATS, _NAN, FrameAssembly, _text
from .source import _one_line

_NONFINITE = schema.NONFINITE_STRINGS
_NAN_ROW = array("f", [_NAN]) * _N_STATS
# Top-level step keys handled explicitly (everything else numeric becomes its own column).
_STEP_STRUCTURED = schema.STEP_STRUCTURED
_STEP_DICTS = schema.STEP_GROUPS  # field -> column prefix
# Known numeric step fields: a wrong type there is worth a note; unknown non-numeric fields are ignored.
_STEP_NUMERIC = frozenset(schema.STEP_SCALARS)
_LEFT_OUT = schema.LAYER_LEFT_OUT


class _LineError(Exception):
    """Raised inside the builder; becomes a LoadError once the absolute line number is known."""

    def __init__(self, line: int | None, reason: str):
        super().__init__(line, reason)
        self.line, self.reason = line, reason


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


class ReferenceBuilder(FrameAssembly):
    """Accumulates records into typed columns, one record at a time; `finish()` makes the `Run`."""

    bulk = False  # no bulk path here: `scan` gives this builder every line, one at a time

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
        self._left_out: dict[str, int] = {}  # per-layer field the schema logs but the frames omit -> entries
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

        if not self._add_scalars_fast(rec, row):
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
            for k in _LEFT_OUT:  # said in a note, not dropped in silence
                if k in lay:
                    self._left_out[k] = self._left_out.get(k, 0) + 1
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

    # -- where the fast paths plug in (`fast.Builder` overrides these; here: nothing is fast)
    def _add_scalars_fast(self, rec: dict, row: int) -> bool:
        return False

    def _add_layers_fast(self, layers: list, row: int) -> bool:
        return False

    def _flush_plans(self) -> None:
        """Move rows held by fast paths into the columns (none here)."""
