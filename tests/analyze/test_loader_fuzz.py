"""Property-based tests of the loader against mutated logs (issue 5 item 7).

A valid log is mutated (truncated at a random byte, bytes flipped, lines dropped or duplicated,
field types changed, garbage lines inserted, numbers tagged NaN/Infinity as strings or bare tokens,
gzip-wrapped); the loader must then either return a Run holding every step whose line survived
intact (or only lost a field's type) or raise the documented `LoadError` -- never anything else.
Seeded and derandomized, so every run is the same; bench/fuzz_loader.py runs 1,000 cases.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyze.loader import LoadError, load_run
from tests.analyze.mutations import base_lines, mutate

BASE = base_lines()
FUZZ = settings(max_examples=60, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def check(tmp_path, m, strict: bool) -> str:
    path = tmp_path / ("run.jsonl.gz" if m.gz else "run.jsonl")
    path.write_bytes(m.data)
    try:
        run = load_run(path, strict=strict, workers=1)
    except LoadError as e:
        msg = str(e)
        assert "\n" not in msg and str(path) in msg, msg  # one line naming the file
        return "error"
    if not strict:
        kept = set(run.steps["step"].tolist())
        lost = m.intact_steps - kept
        assert not lost, f"intact steps {sorted(lost)} lost after {m.ops}; notes: {run.notes}"
    return "ok"


@FUZZ
@given(data=st.data(), strict=st.booleans())
def test_mutated_logs_load_or_raise_load_error(tmp_path, data, strict):
    m = mutate(BASE, lambda lo, hi: data.draw(st.integers(lo, hi)))
    check(tmp_path, m, strict)


@pytest.mark.parametrize("op", ["truncate", "flip", "drop", "duplicate", "retype", "garbage", "nan_tag",
                                "bare_nan", "gzip"])
def test_each_mutation_alone_keeps_intact_steps(tmp_path, op):
    """Every mutation kind once, on every line position (a deterministic sweep, not random)."""
    from tests.analyze.mutations import OPS

    for i in range(0, len(BASE), 3):
        script = iter([1, OPS.index(op), i, 500, 1, 7, 3, 0, 0, 0])
        m = mutate(BASE, lambda lo, hi: min(max(next(script, lo), lo), hi))
        check(tmp_path, m, strict=False)


def test_untouched_log_keeps_every_step(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_bytes(b"".join(BASE))
    run = load_run(path, workers=1)
    assert run.steps["step"].tolist() == list(range(12)) and not run.notes
