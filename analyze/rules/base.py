"""What every rule shares: the `Finding` record, severities, the thresholds more than one family
uses, and the helpers that format evidence and messages the same way for every rule."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from moh import schema

from ..jsonsafe import json_safe

SEVERITIES = ("error", "warning", "info")

# Thresholds shared by several families (each family keeps its own next to its rules).
MIN_STEPS = 5                # fewer logged values than this: a rule has no evidence either way
ZERO_ATOL = 1e-12            # "identically zero": written as 0 (float32 keeps a real 1e-30 non-zero)
HEAD_COLLAPSE_TOL = 0.05     # mean within 0.05 heads of the minimum / maximum
ROUTING_GRAD_GROUPS = schema.ROUTING_GRAD_GROUPS
EVIDENCE_MAX = 10            # values listed in evidence


@dataclass(frozen=True)
class Finding:
    code: str
    severity: str            # "info" | "warning" | "error"
    layer: int | None
    message: str             # one line
    evidence: dict = field(default_factory=dict)   # JSON-safe: steps, values, ...
    action: str = ""

    def to_dict(self) -> dict:
        return {"code": self.code, "severity": self.severity, "layer": self.layer,
                "message": self.message, "evidence": self.evidence, "action": self.action}


# ---- JSON-safe evidence and message pieces -----------------------------------------------------

def _safe(v):
    return json_safe(v, digits=6)


def evidence(steps=(), values=(), **extra) -> dict:
    """The `evidence` dict of a finding: at most EVIDENCE_MAX steps and values, JSON-safe."""
    steps, values = list(steps), list(values)
    out = {"steps": _safe(steps[:EVIDENCE_MAX]), "values": _safe(values[:EVIDENCE_MAX])}
    if len(steps) > EVIDENCE_MAX:
        out["n_steps"] = len(steps)
    out.update(_safe(extra))
    return out


def short(x: float) -> str:
    """A number as messages print it (4 significant digits)."""
    return f"{x:.4g}"


def where(layer: int | None) -> str:
    return f"layer {layer}" if layer is not None else "model-wide"


def in_phase(ph: str | None) -> str:
    return f" in phase {ph}" if ph else ""


def finite(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(values)
    return steps[ok], values[ok]
