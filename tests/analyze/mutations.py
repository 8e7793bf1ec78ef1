"""Mutations of a valid run.jsonl for fuzzing the loader (issue 5 item 7).

`mutate(lines, draw)` applies a few random mutations -- truncate at a byte, flip bytes, drop or
duplicate lines, change field types, insert garbage lines, tag numbers as NaN/Infinity (strings or
bare tokens), gzip the result -- and returns the bytes with what an honest loader must still keep:
`intact_steps`, the step numbers of step lines left untouched or whose non-step fields only got a
wrong type or a non-finite tag (non-strict loading keeps those records, reading the value as NaN).

`draw(lo, hi)` returns an int in [lo, hi]: hypothesis's `data.draw(st.integers(lo, hi))` in the
test suite, `random.Random(seed).randint` in bench/fuzz_loader.py -- one mutator for both.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from typing import Callable

from moh import schema

Draw = Callable[[int, int], int]

WRONG_VALUES = ["text", "", [1, 2], {"a": 1}, True, None, 10 ** 30, -1, [], {}, "NaN", [[None]]]
GARBAGE = [b"{not json", b"\x00\x01\x02\xff", b"[1, 2, 3]", b"null", b'"a string"', b"{}", b'{"event": 5}',
           b'{"event": "step"}', b'{"event": "step", "step": 1.5}', b"\xef\xbb\xbf", b"   ", b"{" * 5000,
           b'{"event": "run_start", "schema_version": "one"}', b'{"event": "mystery"}', b"\xc3\x28 bad utf-8",
           b'{"event": "step", "step": -3, "layers": [{"head_load": "x"}]}', b"NaN", b"1e999"]
OPS = ("truncate", "flip", "drop", "duplicate", "retype", "garbage", "nan_tag", "bare_nan", "gzip")


@dataclass
class Mutated:
    data: bytes
    intact_steps: set[int]   # every one of these must be in run.steps when load_run(strict=False) succeeds
    ops: list[str]
    gz: bool


def base_lines(n_steps: int = 12, seed: int = 0) -> list[bytes]:
    from tests.analyze.conftest import make_records

    recs = make_records(n_steps=n_steps, n_layers=2, n_heads=4, seed=seed)
    return [schema.encode_record(r).encode("utf-8") + b"\n" for r in recs]


def _step_of(line: bytes) -> int | None:
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    if isinstance(rec, dict) and rec.get("event") == "step" and type(rec.get("step")) is int:
        return rec["step"]
    return None


def mutate(lines: list[bytes], draw: Draw, max_ops: int = 4) -> Mutated:
    # each entry: [bytes, step it stands for if still an honest record, else None]
    rows: list[list] = [[ln, _step_of(ln)] for ln in lines]
    ops: list[str] = []
    gz = False
    truncate_at: float | None = None
    for _ in range(draw(1, max_ops)):
        op = OPS[draw(0, len(OPS) - 1)]
        ops.append(op)
        if not rows and op not in ("garbage", "gzip", "truncate"):
            continue
        i = draw(0, max(0, len(rows) - 1))
        if op == "truncate":
            truncate_at = draw(0, 1000) / 1000
        elif op == "flip":
            body = bytearray(rows[i][0].rstrip(b"\n"))
            if body:
                for _ in range(draw(1, 3)):
                    body[draw(0, len(body) - 1)] ^= 1 << draw(0, 7)
            rows[i] = [bytes(body) + b"\n", None]
        elif op == "drop":
            del rows[i]
        elif op == "duplicate":
            rows.insert(draw(0, len(rows)), list(rows[i]))
        elif op in ("retype", "nan_tag", "bare_nan"):
            try:
                rec = json.loads(rows[i][0])
            except ValueError:
                continue
            if not isinstance(rec, dict) or not rec:
                continue
            keys = list(rec)
            key = keys[draw(0, len(keys) - 1)]
            if op == "retype":
                rec[key] = WRONG_VALUES[draw(0, len(WRONG_VALUES) - 1)]
                keeps = key not in ("event", "step")
                text = json.dumps(rec)
            else:
                if key in ("event", "step"):
                    continue
                tag = ("NaN", "Infinity", "-Infinity")[draw(0, 2)]
                rec[key] = tag if op == "nan_tag" else f"__BARE_{tag}__"
                text = json.dumps(rec).replace(f'"__BARE_{tag}__"', tag)  # bare NaN token (other tools)
                keeps = True
            if rec.get("event") == "run_start":
                keeps = False  # a damaged run_start may legitimately make the whole log unusable
            step = rows[i][1] if keeps else None
            rows[i] = [text.encode("utf-8") + b"\n", step]
        elif op == "garbage":
            g = GARBAGE[draw(0, len(GARBAGE) - 1)]
            rows.insert(draw(0, len(rows)), [g + b"\n", None])
        elif op == "gzip":
            gz = True
    data = b"".join(r[0] for r in rows)
    intact = set()
    if truncate_at is not None:
        cut = int(len(data) * truncate_at)
        data = data[:cut]
        pos = 0
        for ln, step in rows:
            pos += len(ln)
            if pos <= cut and step is not None:
                intact.add(step)
    else:
        intact = {step for _, step in rows if step is not None}
    if gz:
        data = gzip.compress(data, mtime=0)
    return Mutated(data, intact, ops, gz)
