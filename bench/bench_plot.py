"""Benchmark `moh plot` on a 200,000-step log of an 8-layer, 8-head model (issue 3: within 10 s).

    .venv/bin/python bench/bench_plot.py [--steps 200000] [--log PATH] [--json out.json] [--docs]

Generates the log with `tests.synthetic.write_synthetic` (reused when --log exists), then
measures, in one run:
  cli       `moh plot LOG -o DIR` as a subprocess (--reps times, median judged): interpreter start,
            imports, real loader, all figures, exit;
  load      `analyze.loader.load_run` alone (in process);
  <family>  each figure drawn and saved (in process), and their total.
Prints a table, writes JSON (--json), and with --docs appends a block to docs/benchmarks.md ("Plots").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analyze import plots  # noqa: E402
from analyze.loader import load_run  # noqa: E402
from tests.synthetic import write_synthetic  # noqa: E402

GOAL_S = 10.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200_000)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--log", type=Path, help="log to use (generated there if absent)")
    ap.add_argument("--json", type=Path, help="write the measurements here")
    ap.add_argument("--docs", action="store_true", help="append the result to docs/benchmarks.md")
    ap.add_argument("--reps", type=int, default=3, help="end-to-end CLI runs; the median is judged")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_plot."))
    log = args.log or work / "run.jsonl"
    if not log.exists():
        t = time.perf_counter()
        write_synthetic(log, n_steps=args.steps, n_layers=args.layers, n_heads=args.heads)
        print(f"generated {log} ({log.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    size_mb = log.stat().st_size / 1e6

    moh = Path(sys.executable).with_name("moh")
    # Where the package is not installed (a bare machine), run the CLI's entry point the same way.
    entry = [str(moh)] if moh.exists() else [sys.executable, "-c", "from cli import main; main()"]
    cmd = [*entry, "plot", str(log), "-o", str(work / "cli")]
    cli_all, load_avg = [], [round(os.getloadavg()[0], 2)]
    for _ in range(args.reps):
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        cli_all.append(round(time.perf_counter() - t, 2))
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
    load_avg.append(round(os.getloadavg()[0], 2))
    cli_s = sorted(cli_all)[(len(cli_all) - 1) // 2]  # lower median

    rows = [(f"cli: moh plot (end to end), median of {args.reps}", cli_s)]
    t = time.perf_counter()
    run = load_run(log)
    load_s = time.perf_counter() - t
    rows.append(("load_run", load_s))
    fig_total = 0.0
    for name in plots.FAMILIES:
        t = time.perf_counter()
        plots.write_figures(run, work / "lib", families=[name])
        dt = time.perf_counter() - t
        fig_total += dt
        rows.append((f"figure {name}", dt))
    rows.append(("figures, all six, one by one", fig_total))
    t = time.perf_counter()
    plots.write_figures(run, work / "all")
    jobs = min(plots.usable_cpus(), len(plots.FAMILIES))
    rows.append((f"figures, all six in {jobs} processes", time.perf_counter() - t))

    result = {
        "benchmark": "moh plot",
        "steps": args.steps, "layers": args.layers, "heads": args.heads, "log_mb": round(size_mb, 1),
        "goal_s": GOAL_S, "cli_s": round(cli_s, 2), "cli_s_all": cli_all, "loadavg_1m": load_avg,
        "load_s": round(load_s, 2), "figures_s": round(fig_total, 2), "figures_parallel_s": round(rows[-1][1], 2),
        "figures_jobs": jobs,
        "per_figure_s": {name[7:]: round(dt, 2) for name, dt in rows if name.startswith("figure ")},
        "pass": cli_s <= GOAL_S,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "command": "python bench/bench_plot.py" + (f" --steps {args.steps}" if args.steps != 200_000 else ""),
    }
    print(f"moh plot on {args.steps:,} steps x {args.layers} layers x {args.heads} heads ({size_mb:.0f} MB)")
    width = max(len(name) for name, _ in rows)
    print(f"{'stage':{width}s} {'seconds':>8s}")
    for name, dt in rows:
        print(f"{name:{width}s} {dt:8.2f}")
    print(f"cli runs: {cli_all} s; load average {load_avg[0]} before, {load_avg[1]} after")
    print(f"goal <= {GOAL_S:.0f} s end to end: {'PASS' if result['pass'] else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.docs:
        docs = ROOT / "docs" / "benchmarks.md"
        block = [
            "", "## Plots", "",
            f"`moh plot` on a synthetic {args.steps:,}-step log, {args.layers} layers x {args.heads} heads "
            f"({size_mb:.0f} MB), {result['machine']}. Goal (issue 3): <= {GOAL_S:.0f} s, loading included.", "",
            "| stage | seconds |", "|---|---:|",
            *[f"| {name} | {dt:.2f} |" for name, dt in rows], "",
            f"Result: **{'pass' if result['pass'] else 'fail'}** ({cli_s:.1f} s end to end; loading "
            f"{load_s:.1f} s of it, figures {fig_total:.1f} s).", "",
            f"Command: `{result['command']} --docs`", "",
        ]
        with open(docs, "a", encoding="utf-8") as fh:
            fh.write("\n".join(block))
    return 0


if __name__ == "__main__":
    sys.exit(main())
