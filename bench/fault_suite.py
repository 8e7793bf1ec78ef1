"""Run the CLI fault catalogue (tests/faults.py) and print the Markdown table of docs/reliability.md.

    python bench/fault_suite.py [--quick] [ID-SUBSTRING ...] > /tmp/faults.md

Every fault is injected for real (files written, permissions dropped with setpriv, writes limited
with RLIMIT_FSIZE, /dev/full) and the real `moh` console script runs in a subprocess; the row shows
what came back. Paths in messages are shortened to the file name relative to the fault's work dir.
Exit status 1 when any fault breaks its contract (the same check as tests/test_cli_faults.py).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.faults import Skip, catalogue, problems, run_fault  # noqa: E402


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    wanted = [a for a in argv if not a.startswith("--")]
    rows, bad, t0 = [], 0, time.perf_counter()
    for f in catalogue():
        if (quick and f.slow) or (wanted and not any(w in f.id for w in wanted)):
            continue
        with tempfile.TemporaryDirectory() as d:
            work = Path(d)
            try:
                obs = run_fault(f, work)
            except Skip as e:
                rows.append(f"| {f.command} | {_cell(f.fault)} | {_cell(f.how)} | skipped: {_cell(str(e))} | | | |")
                continue
            found = problems(f, obs)
            bad += bool(found)
            msg = obs.message_lines[0] if obs.message_lines else ""
            if not msg:
                notes = [ln for ln in obs.stderr.splitlines() if ln.startswith("note:")]
                msg = f"{len(notes)} note(s)" + (f", first: {notes[0]}" if notes else "")
            msg = msg.replace(str(work) + "/", "").replace(str(work), ".")
            left = ", ".join(obs.leftovers) if obs.leftovers else "none"
            verdict = "ok" if not found else "BROKEN: " + "; ".join(found)
            rows.append(f"| {f.command} | {_cell(f.fault)} | {_cell(f.how)} | {obs.code} | {_cell(obs.kept or '—')} "
                        f"| `{_cell(msg[:220])}` | {left} | {verdict} |")
    print("| Command | Fault | How injected | Exit | Records kept | stderr (error line, or notes) | Left behind | Contract |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\n{len(rows)} faults in {time.perf_counter() - t0:.0f} s; {bad} broke the contract.")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
