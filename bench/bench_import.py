"""Benchmark `moh import`: time converting a reference RustGPT text log to telemetry JSONL.

    python bench/bench_import.py [LOG] [--reps 7] [--out bench/results/import.json]

LOG defaults to the largest shared log (../shared/rustgpt/logs/f440076_..., 2.7 MB, UTF-16 LE,
CRLF, 3,570 LARS lines). Each repetition runs the whole import in-process (read, decode, parse,
encode, atomic write) and, separately, its stages; the table shows the median and the spread.
Goal (issue 4): the full import under 1 s.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyze import rustgpt  # noqa: E402
from moh import schema  # noqa: E402

DEFAULT_LOG = (Path(__file__).resolve().parents[2] / "shared" / "rustgpt" / "logs"
               / "f440076_trm_adaptive_improved_10epoch_log.txt")
GOAL_S = 1.0


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log", nargs="?", type=Path, default=DEFAULT_LOG)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("bench/results/import.json"))
    args = ap.parse_args(argv)
    if not args.log.is_file():
        print(f"error: {args.log} not found (pass a RustGPT log path)", file=sys.stderr)
        return 2

    raw = args.log.read_bytes()
    stages: dict[str, list[float]] = {"decode": [], "parse": [], "encode": [], "import (total)": []}
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "run.jsonl"
        rustgpt.import_log(args.log, dst)  # warm-up: imports, regex compilation, page cache
        for _ in range(args.reps):
            stages["decode"].append(_time(lambda: rustgpt.decode(raw)))
            records: list = []
            stages["parse"].append(_time(lambda: records.extend(rustgpt.parse(raw, name=str(args.log)))))
            stages["encode"].append(_time(lambda: [schema.encode_record(r) for r in records]))
            stages["import (total)"].append(_time(lambda: rustgpt.import_log(args.log, dst)))
        out_bytes = dst.stat().st_size
    n_steps = sum(r["event"] == schema.STEP for r in records)

    print(f"{args.log.name}: {len(raw) / 1e6:.2f} MB in, {n_steps} epoch lines, "
          f"{out_bytes / 1e3:.0f} kB JSONL out, {args.reps} repetitions")
    print(f"{'stage':<16} {'median s':>9} {'min s':>8} {'max s':>8}")
    for name, xs in stages.items():
        print(f"{name:<16} {statistics.median(xs):>9.3f} {min(xs):>8.3f} {max(xs):>8.3f}")
    total = statistics.median(stages["import (total)"])
    print(f"goal < {GOAL_S:.1f} s: {'met' if total < GOAL_S else 'NOT met'}")

    result = {
        "log": args.log.name, "bytes": len(raw), "epoch_lines": n_steps, "out_bytes": out_bytes,
        "reps": args.reps, "median_s": {k: statistics.median(v) for k, v in stages.items()},
        "all_s": stages, "goal_s": GOAL_S, "goal_met": total < GOAL_S,
        "python": platform.python_version(), "machine": platform.machine(), "processor": platform.processor(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if total < GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
