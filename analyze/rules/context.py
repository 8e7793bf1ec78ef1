"""`Context`: what every rule needs from a `Run`, computed once and shared by all rules."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from moh import schema

from ..run import Run, layer_block
from .margins import Margin


class Context:
    def __init__(self, run: Run):
        self.run = run
        self.steps = run.steps
        self.sem = run.semantics
        self.config = run.meta.get("config") or {}
        self.source = run.meta.get("source", schema.SOURCE_MOH)
        self.router = run.router
        self.dense = self.router == "dense"
        self.n_heads = run.n_heads
        self.layer_frames, self._block = _layer_frames(run.layers)
        self._layer_cols: dict[tuple[int, str], np.ndarray] = {}
        self._series: dict[str, list] = {}
        self.routing = (not self.dense) and (self.router is not None or bool(self.layer_frames))
        self.final_loads: dict[int, np.ndarray] | None = None
        # What is routed (run_start's `routing`, issue 12; older logs: the engine's heads).
        routing = run.meta.get("routing") or {}
        self.unit = routing.get("unit") or schema.UNIT_HEAD
        # Every token gets the same number of units by design (the engine's moh router, or a
        # recorded top-k model): a constant count is not a symptom there.
        self.fixed_count = self.router == "moh" or routing.get("kind") in ("topk", "shared_topk")
        self.model_wide = [s for s in schema.LAYER_STATS if s in self.steps.columns
                           and self.steps[s].notna().any()]
        self.margins: list[Margin] = []
        self._live: pd.DataFrame | None = None
        self._live_phases: list | None = None

    def margin(self, code: str, statistic: str, value: float, threshold: float, fires: str, *,
               layer: int | None = None, phase: str | None = None, joint: bool = False) -> None:
        """Record what a rule compared with its threshold, whether or not it fired (margins.py);
        joint: one of several conditions that must all cross."""
        self.margins.append(Margin(code, statistic, float(value), float(threshold), fires, layer, phase, joint))

    # what the numbers are
    @property
    def heads_soft(self) -> bool:
        return self.sem.get("heads") == schema.HEADS_SOFT_WEIGHT_SUM

    def heads_what(self) -> str:
        return ("soft-weight sum per token (not a head count)" if self.heads_soft
                else "hard head count per token")

    @property
    def post_clip(self) -> bool:
        return self.sem.get("grad_norm") == schema.GRAD_NORM_POST_CLIP

    @property
    def epoch_mean(self) -> bool:
        return self.sem.get("grad_norm_reduction") == "epoch_mean"

    def grad_what(self) -> str:
        when = "after clipping" if self.post_clip else "before clipping"
        red = "epoch mean of the" if self.epoch_mean else ""
        return f"{red} total gradient norm {when}".strip()

    def clip(self) -> float | None:
        c = self.sem.get("grad_norm_clip")
        if c is None:
            c = self.config.get("grad_clip")
        try:
            c = float(c) if c is not None else None
        except (TypeError, ValueError):
            c = None
        if c is not None and c > 0 and math.isfinite(c):
            return c
        s = self.steps
        if "grad_norm_clipped" in s.columns and "grad_norm" in s.columns and "grad_norm" in s:
            g, gc = s["grad_norm"].to_numpy(float), s["grad_norm_clipped"].to_numpy(float)
            ok = np.isfinite(g) & np.isfinite(gc) & (gc < g * (1 - 1e-6))
            if ok.any():
                return float(np.median(gc[ok]))
        return None

    def k_min(self) -> float:
        try:
            return float(self.config.get("k_min", 1.0))
        except (TypeError, ValueError):
            return 1.0

    def live_steps(self) -> pd.DataFrame:
        """Step rows not skipped for non-finite values (computed once: several rules read them)."""
        if self._live is None:
            s = self.steps
            self._live = s[~s["skipped"].fillna(0).astype(bool)] if "skipped" in s.columns else s
        return self._live

    def live_phases(self) -> list[tuple[str | None, pd.DataFrame]]:
        """`split_phases` of the live steps, split once for the loss and gradient rules."""
        if self._live_phases is None:
            self._live_phases = split_phases(self.live_steps())
        return self._live_phases

    def layer_col(self, li: int, name: str) -> np.ndarray:
        """Column `name` of layer `li` as float64, "step" as stored (computed once, read-only:
        rules share it)."""
        key = (li, name)
        v = self._layer_cols.get(key)
        if v is None:
            if self._block is not None:  # every L-th row of the column, converted straight from it
                full = self.run.layers[name].to_numpy()  # as stored: a view, no copy
                rows = full[self._block.index(li)::len(self._block)]
                v = rows.copy() if name == "step" else rows.astype(np.float64)
            else:
                col = self.layer_frames[li][name]
                v = col.to_numpy() if name == "step" else col.to_numpy(float)
            v.flags.writeable = False
            self._layer_cols[key] = v
        return v

    def series(self, stat: str) -> list[tuple[int | None, np.ndarray, np.ndarray]]:
        """(layer, steps, values) for a stat: one per layer that logged it, or one model-wide
        (layer None) when the log carries it as a step-level value (imported logs)."""
        if stat in self._series:
            return self._series[stat]
        out = []
        for li, f in self.layer_frames.items():
            if stat in f.columns:
                v = self.layer_col(li, stat)
                if np.isfinite(v).any():
                    out.append((li, self.layer_col(li, "step"), v))
        if not out and stat in self.model_wide:
            s = self.steps
            out.append((None, s["step"].to_numpy(), s[stat].to_numpy(float)))
        self._series[stat] = out
        return out


def _layer_frames(lay: pd.DataFrame) -> tuple[dict[int, pd.DataFrame], list[int] | None]:
    """One frame per layer, rows in step order, and the repeated block of layer numbers (or None).

    The loader's layer frame repeats one block of layers per step, so a layer's rows are every
    L-th row: a strided view, no copy. Otherwise one reordering copy, then a slice per layer
    (a groupby plus a sort per layer costs 4x as much on 1.6M rows)."""
    if not len(lay):
        return {}, None
    block = layer_block(lay)
    if block is not None:
        frames = {li: lay.iloc[j::len(block)].reset_index(drop=True)
                  for j, li in sorted(enumerate(block), key=lambda x: x[1])}
        return frames, block
    layer, step = lay["layer"].to_numpy(), lay["step"].to_numpy()
    if layer.dtype.kind not in "iu" or layer.min() < 0 or layer.max() >= 1 << 16:
        return {int(li): sub.sort_values("step", kind="stable").reset_index(drop=True)
                for li, sub in lay.groupby("layer", sort=True, observed=True)}, None
    key = layer.astype(np.uint16)
    order = np.lexsort((step, key))
    by_layer = key[order]
    cuts = np.flatnonzero(by_layer[1:] != by_layer[:-1]) + 1
    ordered = lay.take(order)
    return {int(by_layer[a]): ordered.iloc[a:b].reset_index(drop=True)
            for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(order)])}, None


def split_phases(frame: pd.DataFrame) -> list[tuple[str | None, pd.DataFrame]]:
    """(phase, rows) in the order the phases first appear; one (None, frame) when the log names
    no phase. The rules and analyze/baseline.py split by phase the same way."""
    if "phase" not in frame.columns or frame["phase"].isna().all():
        return [(None, frame)]
    return [(str(ph), frame[frame["phase"] == ph]) for ph in pd.unique(frame["phase"].dropna())]
