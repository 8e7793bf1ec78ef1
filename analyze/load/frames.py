"""Frame assembly: the builder's typed columns become the `Run`'s DataFrames (without a copy where
numpy allows), with the notes that say what was skipped, resolved or left out."""

from __future__ import annotations

import math
from array import array
from typing import Any

import numpy as np
import pandas as pd

from moh import schema

from ..run import Run
from .source import LoadError, _lines_list, _one_line

_NAN = math.nan
_LAYER_STATS = schema.LAYER_COLUMNS  # every numeric per-layer field: a column of the layer frame
_N_STATS = len(_LAYER_STATS)

_COLUMN_ORDER = {name: i for i, name in enumerate(schema.STEP_COLUMNS)}


def _column_rank(name: str) -> tuple:
    """Known step columns in schema order, then the rest by name (independent of record order)."""
    return (_COLUMN_ORDER.get(name, len(_COLUMN_ORDER)), name)


def _text(v: Any) -> str | None:
    if v is None or type(v) is str:
        return v
    return str(v)


class FrameAssembly:
    """`finish()`: the `Run` of what a builder (a subclass holding the columns) has read."""

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
        for k, n in self._left_out.items():
            self.note(None, f"layers[].{k} present in {n} layer entries and not loaded: no rule or figure "
                            f"reads it yet")

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
