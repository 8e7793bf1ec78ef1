"""Recipe candidates by the numbers: real `moh train` runs, each one reported like `moh report`.

    .venv/bin/python bench/recipe_sweep.py --candidate NAME[:key=value,key=value] [...]
        [--corpus embedded|reference ...] [--router adaptive ...] [--seed 1 ...] [--threads N]
        [--jsonl bench/results/recipe_sweep.jsonl]

Every (candidate, corpus, router, seed) is one `moh train --quiet` subprocess (nothing else
changed); candidates run interleaved per (corpus, router, seed) so that each sees about the same
machine load. Per run it prints and appends to the JSONL file:
- wall and CPU seconds (user + sys of the child) of the whole run, load average before it;
- time to target: `elapsed` of the last logged step of the first pre-training epoch whose mean
  logged `loss` is <= 0.40 (with the default `log_every = 2` that mean is over every other step);
- each phase's last-epoch mean loss, the last step's grad norm (before clipping) and mean heads;
- the instruction phase's exact match, and (reference corpus) whether the greedy answer to
  "User: How do mountains form?" is the corpus's own;
- the report's verdict and its warning/error finding codes (bench/calibrate_report.report_run,
  the same code `moh report` runs).
A candidate with no `:` is the current default config.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_time_to_target import SHARED, analyse, expected_answer  # noqa: E402
from calibrate import moh_command  # noqa: E402
from calibrate_report import report_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def parse_candidate(text: str) -> tuple[str, list[str]]:
    name, _, sets = text.partition(":")
    return name, [s for s in sets.split(",") if s]


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_one(name: str, sets: list[str], corpus: str, router: str, seed: int, threads: int | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = moh_command() + ["train", "--quiet", "--out", tmp, "--router", router, "--seed", str(seed)]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        if corpus == "reference":
            cmd += ["--data", str(SHARED / "data")]
        for kv in sets:
            cmd += ["--set", kv]
        load = os.getloadavg()[0]
        cpu0, t0 = children_cpu(), time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
        row = {"candidate": name, "sets": sets, "corpus": corpus, "router": router, "seed": seed,
               "threads": threads, "load": load, "wall_s": wall, "cpu_s": cpu, "rc": proc.returncode}
        if proc.returncode != 0:
            row["error"] = proc.stderr.strip().splitlines()[-1:] 
            return row
        row.update(summarise(Path(tmp) / "run.jsonl", corpus))
    return row


def summarise(path: Path, corpus: str) -> dict:
    """The figures of one finished run.jsonl (see the module note)."""
    ours = analyse(path)
    pre, ins = ours["phases"]["pretrain"], ours["phases"]["instruct"]
    answer = (ins["mountains"] or {}).get("output")
    rep = report_run(path)
    return {
        "to_target_s": ours["time_to_target_s"], "target_epoch": ours["target_epoch"],
        "steps": ours["steps"], "pre_loss": pre["epoch_loss"], "ins_loss": ins["epoch_loss"],
        "pre_gn": pre["grad_norm_last_step"], "ins_gn": ins["grad_norm_last_step"],
        "heads": ins["heads_mean_last_step"], "em": ins["exact_match"],
        "exact": None if corpus != "reference" else answer == expected_answer(SHARED / "data"),
        "verdict": rep["verdict"], "failed": rep["failed_criteria"], "codes": rep["codes"],
    }


def line(r: dict) -> str:
    if r.get("rc"):
        return f"{r['candidate']:>10} {r['corpus']:>9} {r['router']:>8} s{r['seed']} FAILED {r.get('error')}"
    f = lambda x, d=2: "—" if x is None else f"{x:.{d}f}"  # noqa: E731
    return (f"{r['candidate']:>10} {r['corpus']:>9} {r['router']:>8} s{r['seed']} "
            f"wall {r['wall_s']:5.1f} cpu {r['cpu_s']:5.1f} load {r['load']:.1f} | target {f(r['to_target_s'], 1)}"
            f" (ep {r['target_epoch']}) | loss {f(r['pre_loss'], 3)}/{f(r['ins_loss'], 3)} gn {f(r['pre_gn'])}/"
            f"{f(r['ins_gn'])} heads {f(r['heads'])} em {f(r['em'])} exact {r['exact']} | {r['verdict']} "
            f"{','.join(r.get('failed', []))} | {','.join(r['codes'])}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidate", action="append", default=[])
    ap.add_argument("--runs", type=Path, nargs="+", default=[],
                    help="summarise these finished run directories (e.g. bench/calibrate.py's cache) instead")
    ap.add_argument("--corpus", action="append", choices=("embedded", "reference"))
    ap.add_argument("--router", action="append")
    ap.add_argument("--seed", action="append", type=int)
    ap.add_argument("--threads", type=int, default=None, help="--threads for every run (default: the config's)")
    ap.add_argument("--jsonl", type=Path, default=ROOT / "bench" / "results" / "recipe_sweep.jsonl")
    a = ap.parse_args(argv)
    for d in a.runs:  # calibrate cache names: <corpus>-<router>-s<seed>-<key>
        if not (d / "run.jsonl").exists() or '"run_end"' not in (d / "run.jsonl").read_text()[-400:]:
            print(f"{d}: no finished run.jsonl (left out)", file=sys.stderr)
            continue
        name = d.name.rsplit("-", 1)[0]
        corpus, router, seed = (name.split("-") + ["", "", "s0"])[:3]
        row = {"candidate": "runs", "corpus": corpus, "router": router, "seed": int(seed[1:] or 0),
               "rc": 0, "load": float("nan"), "wall_s": float("nan"), "cpu_s": float("nan"),
               **summarise(d / "run.jsonl", corpus)}
        if (d / "DONE").exists():  # calibrate's note: the subprocess's wall time and the load after it
            done = json.loads((d / "DONE").read_text())
            row.update(wall_s=done["train_s"], load=done["loadavg"][0])
        print(line(row), flush=True)
    cands = [parse_candidate(c) for c in a.candidate]
    a.jsonl.parent.mkdir(parents=True, exist_ok=True)
    for corpus in a.corpus or ["embedded"]:
        for router in a.router or ["adaptive"]:
            for seed in a.seed or [1]:
                for name, sets in cands:
                    r = run_one(name, sets, corpus, router, seed, a.threads)
                    print(line(r), flush=True)
                    with a.jsonl.open("a") as f:
                        f.write(json.dumps({**r, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
