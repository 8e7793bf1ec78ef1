"""Seeded fuzz run of the loader: N mutated logs (tests/analyze/mutations.py), counts of outcomes.

    python bench/fuzz_loader.py --cases 1000 --seed 0

Each case mutates a valid 12-step log (2 layers x 4 heads) with 1-4 random mutations and loads it
(strict or not, one process or two workers). Outcomes: `ok` (a Run that holds every intact step),
`LoadError` (the documented error), `lost` (a Run missing an intact step: a loader bug) and
`traceback` (any other exception: a loader bug). Exit status 1 unless lost == traceback == 0.
"""

from __future__ import annotations

import argparse
import collections
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyze.loader import LoadError, load_run  # noqa: E402
from tests.analyze.mutations import base_lines, mutate  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-ops", type=int, default=4)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    bases = [base_lines(n_steps=12, seed=s) for s in range(3)]
    counts: collections.Counter = collections.Counter()
    ops_seen: collections.Counter = collections.Counter()
    first_failures: list[str] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        for case in range(args.cases):
            m = mutate(bases[case % len(bases)], rng.randint, max_ops=args.max_ops)
            ops_seen.update(m.ops)
            strict = rng.random() < 0.3
            workers = 2 if rng.random() < 0.1 else 1
            path = Path(d) / f"case{case}.jsonl{'.gz' if m.gz else ''}"
            path.write_bytes(m.data)
            try:
                run = load_run(path, strict=strict, workers=workers)
            except LoadError as e:
                counts["LoadError"] += 1
                if "\n" in str(e) or str(path) not in str(e):
                    counts["traceback"] += 1
                    first_failures.append(f"case {case}: LoadError not one line naming the file: {e!r}")
            except Exception:  # noqa: BLE001 -- exactly what the fuzz run counts
                counts["traceback"] += 1
                if len(first_failures) < 5:
                    first_failures.append(f"case {case} ops {m.ops} strict={strict}:\n{traceback.format_exc()}")
            else:
                lost = m.intact_steps - set(run.steps["step"].tolist()) if not strict else set()
                if lost:
                    counts["lost"] += 1
                    if len(first_failures) < 5:
                        first_failures.append(f"case {case} ops {m.ops}: intact steps lost {sorted(lost)}")
                else:
                    counts["ok"] += 1
            path.unlink()
    dt = time.perf_counter() - t0
    print(f"fuzz_loader: {args.cases} cases, seed {args.seed}, {dt:.1f} s")
    print(f"  ok (intact steps kept): {counts['ok']}")
    print(f"  LoadError (documented): {counts['LoadError']}")
    print(f"  lost intact steps:      {counts['lost']}")
    print(f"  tracebacks:             {counts['traceback']}")
    print("  mutations applied:      " + ", ".join(f"{k} {v}" for k, v in sorted(ops_seen.items())))
    for f in first_failures:
        print(f)
    return 0 if counts["lost"] == counts["traceback"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
