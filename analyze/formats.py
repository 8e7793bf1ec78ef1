"""The output formats of `moh report` and `moh compare`, chosen in one place: a document (a report,
a comparison) has one renderer per format, and JSON is written the same way for both."""

from __future__ import annotations

import json
from typing import Any, Callable

FORMATS = ("table", "md", "json")


def to_json(doc: dict) -> str:
    """Strict JSON (no NaN tokens: values are made JSON-safe before), indented, one trailing newline."""
    return json.dumps(doc, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def render_as(fmt: str, doc: Any, renderers: dict[str, Callable[[Any], Any]]) -> Any:
    """`renderers[fmt](doc)`; ValueError naming the formats when `fmt` is not one of them."""
    if fmt not in renderers:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    return renderers[fmt](doc)
