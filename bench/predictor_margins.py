"""predictor_growth's two statistics on any run logs, per layer, against its thresholds (issue 18).

Usage:
    python bench/predictor_margins.py RUN_LOG... [--label NAME=LOG ...]

For each log (an engine run.jsonl or an imported reference log) and each layer that logs
`pred_norm`: the final norm (mean over the last 5% of the logged steps), the largest growth over
a phase's last quarter relative to its level, each one's margin from its threshold (in units of
the threshold, > 0 clear of it, as bench/calibrate.py tables them) and whether the rule fires.
The values are the rule's own (analyze.findings.measure_all), so this prints what `moh report`
judges, for runs outside the calibration population (a recalibration's extra seeds and
broken runs, docs/findings.md "Recalibration of predictor_growth"). Torch-free.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analyze.findings import find_all, measure_all  # noqa: E402
from analyze.loader import load_run  # noqa: E402

CODE = "predictor_growth"


def rows(path: Path) -> list[dict]:
    """One dict per layer: level, growth, their margins, fires."""
    run = load_run(path)
    _, margins = measure_all(run)
    fired = {f.layer for f in find_all(run) if f.code == CODE}
    per_layer: dict = {}
    for m in margins:
        if m.code != CODE:
            continue
        d = per_layer.setdefault(m.layer, {"layer": m.layer})
        key = "level" if m.statistic.startswith("final") else "growth"
        d[key], d[key + "_margin"] = m.value, m.margin
    for li, d in per_layer.items():
        d["fires"] = li in fired
    return list(per_layer.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("logs", nargs="*", type=Path)
    ap.add_argument("--label", action="append", default=[], metavar="NAME=LOG",
                    help="a log with the name to print for it (default: its directory's name)")
    args = ap.parse_args(argv)
    named = [(p.parent.name if p.name == "run.jsonl" else p.name, p) for p in args.logs]
    named += [(kv.split("=", 1)[0], Path(kv.split("=", 1)[1])) for kv in args.label]
    print("| run | layer | final norm (fires >= 2.5) | margin | late growth (fires >= 2%) | margin | fires |")
    print("|---|---|---|---|---|---|---|")
    for name, path in named:
        for d in rows(path):
            layer = "model" if d["layer"] is None else d["layer"]
            print(f"| {name} | {layer} | {d['level']:.3f} | {d['level_margin']:+.2f} | "
                  f"{100 * d['growth']:+.2f}% | {d['growth_margin']:+.2f} | {'yes' if d['fires'] else 'no'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
