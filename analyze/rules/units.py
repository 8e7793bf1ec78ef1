"""Findings worded in the run's routing unit: the routing rules speak of heads (the engine routes
attention heads); on a log whose run_start says `routing.unit = "expert"` (moh.monitor on a
mixture of experts) the same findings say experts. Codes, evidence and actions keep their names
(`dead_heads`, `head_load` are schema and finding names, not prose)."""

from __future__ import annotations

import re
from dataclasses import replace

from moh import schema

from .base import Finding

# whole words only: "head_load" / "heads_mean" (field names) contain "_" and stay as they are
_WORD = re.compile(r"\b([Hh]ead)(s?)\b(?!_)")


def reword(text: str, unit: str) -> str:
    """`text` with head / heads / head(s) in the word for `unit`."""
    if unit == schema.UNIT_HEAD:
        return text
    return _WORD.sub(lambda m: (unit.capitalize() if m.group(1)[0] == "H" else unit) + m.group(2), text)


def in_units(findings: list[Finding], unit: str) -> list[Finding]:
    """The findings with their messages and actions in `unit`'s word (the same objects when unit
    is head)."""
    if unit == schema.UNIT_HEAD:
        return findings
    return [replace(f, message=reword(f.message, unit), action=reword(f.action, unit) if f.action else f.action)
            for f in findings]
