"""Bad input and unwritable output for every command, through the real `moh` console script.

The catalogue (tests/faults.py) is shared with bench/fault_suite.py, which prints the table in
docs/reliability.md. Contract (issue 5 item 5): the documented exit code; on failure exactly one
`error:` line on stderr naming the file (and line); never a traceback; no partial output left.
"""

from __future__ import annotations

import pytest

from tests.faults import Skip, catalogue, problems, run_fault

FAULTS = catalogue()


@pytest.mark.parametrize(
    "fault", [pytest.param(f, id=f.id, marks=[pytest.mark.slow] if f.slow else []) for f in FAULTS])
def test_fault(fault, tmp_path):
    try:
        obs = run_fault(fault, tmp_path)
    except Skip as e:
        pytest.skip(str(e))
    found = problems(fault, obs)
    assert not found, f"{fault.id}: {found}\n--- stderr\n{obs.stderr}\n--- stdout\n{obs.stdout[:2000]}"


def test_every_command_is_covered():
    commands = {f.command.split()[0] for f in FAULTS}
    assert commands == {"report", "compare", "plot", "import", "train"}
