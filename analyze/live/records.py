"""Log lines to records for the live views: JSON objects, non-finite tags decoded; a line that
is not a JSON object (a torn or foreign line) is counted, not fatal, as the loader's notes do."""

from __future__ import annotations

from typing import Iterable

import orjson

from moh import schema


def read_records(lines: Iterable[bytes], bad: list[int] | None = None) -> list[dict]:
    """The records among `lines`; the count of rejected non-blank lines goes into `bad[0]`."""
    out = []
    for line in lines:
        if not line.strip():
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            rec = None
        if isinstance(rec, dict):
            out.append(rec)
        elif bad is not None:
            bad[0] += 1
    return out


def number(value) -> float | None:
    """A numeric field as a float (tagged NaN/inf decoded), None when absent or not a number."""
    value = schema.decode_number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
