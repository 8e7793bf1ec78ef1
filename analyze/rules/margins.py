"""Margins: the statistic each rule compared with its threshold on a run, whether it fired or not.

A rule records one `Margin` per thing it judged (`Context.margin`); `measure_all(run)` returns
them next to the findings. bench/calibrate.py tables them over healthy and broken runs, so every
threshold is seen against the values real runs produce: how far the healthy ones stay clear,
how far the broken ones cross it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FIRES = (">", ">=", "<", "<=")


@dataclass(frozen=True)
class Margin:
    code: str
    statistic: str           # what was measured, in words
    value: float
    threshold: float
    fires: str               # the rule fires when `value <fires> threshold`
    layer: int | None = None
    phase: str | None = None
    # True: one of several conditions that must ALL cross for the rule to fire (its other
    # statistics recorded alongside, same layer and phase); a run is clear of the rule when any
    # one of them is clear.
    joint: bool = False

    @property
    def crossed(self) -> bool:
        v, t = self.value, self.threshold
        if not (math.isfinite(v) and math.isfinite(t)):
            return False
        return {">": v > t, ">=": v >= t, "<": v < t, "<=": v <= t}[self.fires]

    @property
    def margin(self) -> float:
        """Distance from the threshold to the value on the safe side, in units of |threshold|
        (the raw distance for a threshold of 0): 1.0 = a whole threshold clear, < 0 = crossed."""
        v, t = self.value, self.threshold
        if not (math.isfinite(v) and math.isfinite(t)):
            return math.nan
        d = (t - v) if self.fires in (">", ">=") else (v - t)
        return d / abs(t) if t else d

    def to_dict(self) -> dict:
        return {"code": self.code, "statistic": self.statistic, "value": self.value,
                "threshold": self.threshold, "fires": self.fires, "layer": self.layer,
                "phase": self.phase, "crossed": self.crossed, "margin": self.margin,
                "joint": self.joint}
