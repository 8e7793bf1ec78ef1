"""Benchmark: loading + criteria + findings of a 200,000-step log vs `pandas.read_json(lines=True)`.

    python bench/bench_analysis.py                        # 200,000 steps, 8 layers x 8 heads, 3 runs a side
    python bench/bench_analysis.py --steps 20000 --json out.json

Each side runs in a fresh subprocess (same file, warm page cache for both: the file is read
once before timing). Wall time is measured in the child around the work itself (imports
excluded, the same for both) and for the whole process from the parent. Peak memory is the
largest sum of RSS over the child and all its descendants (sampled every 10 ms from /proc,
so the loader's parsing workers count too; shared pages are counted in each process, which
overstates ours), cross-checked with the child's own ru_maxrss.

Goal (issue 3): ours >= 5x faster, <= 1/4 of the pandas peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cpu_s() -> float:
    """User + system CPU seconds of this process and its reaped children (the loader's workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _work(side: str, path: str, workers: int | None) -> dict:
    """Runs in the child: import, then time the work (wall and CPU)."""
    if side == "pandas":
        import pandas as pd

        cpu0 = _cpu_s()
        t = time.perf_counter()
        df = pd.read_json(path, lines=True)
        wall = time.perf_counter() - t
        info = {"rows": int(len(df)), "columns": int(df.shape[1])}
    else:
        sys.path.insert(0, str(ROOT))
        from analyze.criteria import evaluate, load_criteria
        from analyze.findings import find_all
        from analyze.loader import load_run

        cpu0 = _cpu_s()
        t = time.perf_counter()
        run = load_run(path, workers=workers)
        t_load = time.perf_counter() - t
        results = evaluate(run, load_criteria())
        t_crit = time.perf_counter() - t - t_load
        findings = find_all(run)
        wall = time.perf_counter() - t
        info = {"steps": int(len(run.steps)), "layer_rows": int(len(run.layers)),
                "head_rows": int(len(run.head_load)), "criteria": len(results), "findings": len(findings),
                "load_s": round(t_load, 3), "criteria_s": round(t_crit, 3),
                "findings_s": round(wall - t_load - t_crit, 3)}
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ru_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"side": side, "work_s": round(wall, 3), "cpu_s": round(_cpu_s() - cpu0, 3),
            "maxrss_self_mb": round(ru / 1024, 1),
            "maxrss_children_mb": round(ru_children / 1024, 1), **info}


def _tree_rss_kb(pid: int) -> int:
    """RSS (kB) of pid and all its descendants, from /proc."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def measure(side: str, path: Path, workers: int | None) -> dict:
    cmd = [sys.executable, __file__, "--child", side, str(path)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_kb(proc.pid))
        time.sleep(0.01)
    out, err = proc.communicate()
    total = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{side} failed ({proc.returncode}): {err.strip()[-500:]}")
    res = json.loads(out.strip().splitlines()[-1])
    res["process_s"] = round(total, 3)
    res["peak_tree_rss_mb"] = round(max(peak / 1024, res["maxrss_self_mb"]), 1)
    return res


def make_log(path: Path, steps: int, layers: int, heads: int) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.synthetic import write_synthetic

    write_synthetic(path, n_steps=steps, n_layers=layers, n_heads=heads, seed=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200_000)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--log", type=Path, help="use (or create) this log instead of a temporary one")
    ap.add_argument("--workers", type=int, default=None, help="loader processes (default: auto)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs per side; medians are compared")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--child", nargs=2, metavar=("SIDE", "PATH"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(_work(a.child[0], a.child[1], a.workers)))
        return

    tmp = None
    path = a.log
    if path is None:
        tmp = tempfile.TemporaryDirectory()
        path = Path(tmp.name) / "run.jsonl"
    if not path.exists():
        t = time.perf_counter()
        make_log(path, a.steps, a.layers, a.heads)
        print(f"generated {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s",
              file=sys.stderr)
    with open(path, "rb") as f:  # warm the page cache: both sides then read from memory
        while f.read(1 << 24):
            pass

    runs = {"ours": [], "pandas": []}
    pair_ratios = []
    for _ in range(a.repeat):  # interleaved, so both sides see the same machine load
        for side in ("ours", "pandas"):
            load_before = os.getloadavg()[0]
            r = measure(side, path, a.workers)
            r["loadavg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            runs[side].append(r)
            print(f"{side}: {r['work_s']:.1f} s, peak {r['peak_tree_rss_mb']:.0f} MB, load {r['loadavg_1m']}",
                  file=sys.stderr)
        pair_ratios.append(runs["pandas"][-1]["work_s"] / runs["ours"][-1]["work_s"])
    med = {s: sorted(v, key=lambda r: r["work_s"])[(len(v) - 1) // 2] for s, v in runs.items()}  # lower median
    peak = {s: max(r["peak_tree_rss_mb"] for r in v) for s, v in runs.items()}
    o, p = med["ours"], med["pandas"]
    speedup = p["work_s"] / o["work_s"]
    mem_ratio = peak["ours"] / peak["pandas"]
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "log": {"path": str(path), "bytes": path.stat().st_size, "steps": a.steps, "layers": a.layers,
                "heads": a.heads},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "ours": o, "pandas": p, "peak_tree_rss_mb": peak,
        "speedup": round(speedup, 2), "memory_ratio": round(mem_ratio, 3),
        "speedup_per_pair": [round(x, 2) for x in pair_ratios],
        "cpu_s_all": {s: [r["cpu_s"] for r in v] for s, v in runs.items()},
        "work_s_all": {s: [r["work_s"] for r in v] for s, v in runs.items()},
        "goal": {"speedup_min": 5.0, "memory_ratio_max": 0.25},
        "met": bool(speedup >= 5.0 and mem_ratio <= 0.25),
        "runs": runs,
    }
    rows = [
        ("", "ours (load+criteria+findings)", "pandas.read_json(lines=True)"),
        ("work wall time, median (s)", f"{o['work_s']:.2f}", f"{p['work_s']:.2f}"),
        ("  all runs (s)", " ".join(f"{r['work_s']:.1f}" for r in runs["ours"]),
         " ".join(f"{r['work_s']:.1f}" for r in runs["pandas"])),
        ("process wall time (s)", f"{o['process_s']:.2f}", f"{p['process_s']:.2f}"),
        ("peak RSS, process tree (MB)", f"{peak['ours']:.0f}", f"{peak['pandas']:.0f}"),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    for r in rows:
        print(f"{r[0]:<{w0}}  {r[1]:>{w1}}  {r[2]:>28}")
    print(f"ours: load {o['load_s']} s, criteria {o['criteria_s']} s, findings {o['findings_s']} s")
    cpu_med = {s: sorted(r["cpu_s"] for r in v)[(len(v) - 1) // 2] for s, v in runs.items()}
    print(f"CPU seconds (all processes), median: ours {cpu_med['ours']:.1f}, pandas {cpu_med['pandas']:.1f} "
          f"({cpu_med['pandas'] / cpu_med['ours']:.2f}x less work; not the goal's measure, but robust to machine load)")
    print("speedup per interleaved pair: " + ", ".join(f"{x:.2f}x" for x in pair_ratios))
    print(f"speedup {speedup:.2f}x of medians (goal >= 5x); memory {mem_ratio:.3f} of pandas (goal <= 0.25); "
          f"{'met' if result['met'] else 'NOT met'}")
    if a.json:
        a.json.write_text(json.dumps(result, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
