"""`moh/telemetry.schema.json` (JSON Schema 2020-12) generated from the definitions in `moh.schema`.

    python -m moh.schema --write    regenerate the file
    python -m moh.schema --check    exit 1 when the file differs from the definitions
    python -m moh.schema            print the generated schema

The file is committed (readers without Python use it) and never edited by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import schema
from .schema import Field

PATH = Path(__file__).with_name("telemetry.schema.json")

_COMMON = {
    "num": {"description": "a number, or a tagged non-finite float",
            "oneOf": [{"type": "number"}, {"enum": list(schema.NONFINITE_STRINGS)}]},
    "num_or_null": {"oneOf": [{"$ref": "#/$defs/num"}, {"type": "null"}]},
    "time": {"type": "number", "description": "Unix time, seconds"},
    "count": {"type": "integer", "minimum": 0},
}
_REF = {"time": "#/$defs/time", "count": "#/$defs/count"}


def _nullable(s: dict, f: Field) -> dict:
    return {"oneOf": [s, {"type": "null"}]} if f.nullable else s


def _object(fields: tuple[Field, ...]) -> dict:
    out: dict = {"type": "object"}
    required = [f.name for f in fields if f.required]
    if required:
        out["required"] = required
    out["properties"] = {f.name: field_schema(f) for f in fields}
    return out


def field_schema(f: Field) -> dict:
    """The JSON Schema of one field's value."""
    k = f.kind
    if k == "const":
        s = {"const": f.const}
    elif k == "enum":
        s = {"$ref": "#/$defs/phase"} if f.keys == schema.PHASES else {"enum": list(f.keys)}
    elif k == "num":
        if f.minimum is not None or f.maximum is not None:
            s = _nullable_bounded(f)
        else:
            s = {"$ref": "#/$defs/num_or_null"}
    elif k in _REF:
        s = {"$ref": _REF[k]}
    elif k == "seconds":
        s = {"type": "number", "minimum": 0}
    elif k == "int":
        s = {"type": ["integer", "null"] if f.nullable else "integer", "minimum": f.minimum or 0}
    elif k == "str":
        s = {"type": ["string", "null"] if f.nullable else "string"}
    elif k == "bool":
        s = {"type": "boolean"}
    elif k == "nums":
        s = _nullable({"type": "array", "items": {"$ref": "#/$defs/num"}}, f)
    elif k == "object":
        s = _object(f.keys) if f.keys else {"type": "object"}
    elif k == "records":
        s = {"type": "array", "items": {"$ref": "#/$defs/layer"} if f.keys is schema.LAYER else _object(f.keys)}
    elif k == "groups":
        s = {"$ref": "#/$defs/groups" if f.keys == schema.GRAD_GROUPS else "#/$defs/aux"}
    else:
        raise ValueError(f"field {f.name}: unknown kind {k!r}")
    if f.description and k not in ("const", "groups", "records"):
        s = {**s, "description": f.description}
    return s


def _nullable_bounded(f: Field) -> dict:
    bounded = {"type": "number"}
    if f.minimum is not None:
        bounded["minimum"] = f.minimum
    if f.maximum is not None:
        bounded["maximum"] = f.maximum
    return {"oneOf": [bounded, {"type": "null"}]}


def _groups(keys: tuple) -> dict:
    return {"type": "object", "required": list(keys), "additionalProperties": {"$ref": "#/$defs/num_or_null"}}


def build() -> dict:
    defs = dict(_COMMON)
    defs["phase"] = {"enum": list(schema.PHASES)}
    defs["layer"] = _object(schema.LAYER)
    defs["groups"] = _groups(schema.GRAD_GROUPS)
    defs["aux"] = _groups(schema.AUX_TERMS)
    for kind, fields in schema.RECORDS.items():
        defs[kind] = _object(fields)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/moh/telemetry.schema.json",
        "title": f"moh run.jsonl record (schema_version {schema.SCHEMA_VERSION})",
        "description": "One JSON object per line of run.jsonl. Non-finite floats are the strings \"NaN\", "
                       "\"Infinity\", \"-Infinity\". Generated from moh/schema.py (python -m moh.schema "
                       "--write); see docs/telemetry.md.",
        "oneOf": [{"$ref": f"#/$defs/{kind}"} for kind in schema.RECORDS],
        "$defs": defs,
    }


def text() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--write"]:
        PATH.write_text(text(), encoding="utf-8")
        print(PATH)
        return 0
    if args == ["--check"]:
        if PATH.read_text(encoding="utf-8") != text():
            print(f"{PATH} differs from moh/schema.py: run python -m moh.schema --write", file=sys.stderr)
            return 1
        return 0
    if not args:
        sys.stdout.write(text())
        return 0
    print("usage: python -m moh.schema [--write | --check]", file=sys.stderr)
    return 2
