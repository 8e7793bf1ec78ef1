"""Calibration of `--baseline`: how far reseeds of one config wander, how far defects go.

    .venv/bin/python bench/calibrate_baseline.py [--runs DIR] [--seeds 1 2 3 4] [--train]

Healthy runs are the default config of each router with only the seed changed (`moh train
--seed N --router R`), read from DIR/<router>_s<seed>/run.jsonl (`--train` trains the missing
ones, one at a time, threads=1) plus the sample logs' seed-1337 runs (healthy_adaptive,
dense_baseline). Broken runs: the sample logs broken_no_gradient and broken_unstable_lr (the
default adaptive config without the straight-through estimator / with lr 0.05 and no clip), and
DIR/squeezed_threshold (tau in [0.79, 0.8]; trained by `--train`).

For every ordered pair (run, reference) of healthy runs of one router, and every broken run
against every healthy adaptive run, it measures per series the least floor the band would need
for the run to stay inside in all but MIN_WINDOWS_OUT - 1 windows (0: the reference's own spread
already covers it): in log units for log-compared series, as a share of the natural range for
bounded ones. A reseed passes when its need is below the floor; a broken run deviates in a
series when its need (the least over all healthy references) is above it. A floor above every reseed's need and below the defects' is what
analyze/baseline.py uses; the table shows both sides. JSON: bench/results/calibrate_baseline.json
(`--small`: calibrate_baseline_small.json). Exit 1 when a reseed leaves its band.
"""

from __future__ import annotations

import argparse
import itertools
import math
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _engine import table, write_json  # noqa: E402

from analyze import baseline as B  # noqa: E402
from analyze.loader import load_run  # noqa: E402

SAMPLES = ROOT / "sample_logs"
ROUTERS = ("adaptive", "moh", "dense")
SAMPLE_HEALTHY = {"adaptive": "healthy_adaptive", "dense": "dense_baseline"}
BROKEN = ("broken_no_gradient", "broken_unstable_lr")
# Broken runs trained here (seed 1, default config but the flags), used when present.
BROKEN_TRAINED = {"squeezed_threshold": ["--set", "tau_min=0.79", "--set", "tau_max=0.8"]}


def needed_floors(run, ref) -> dict[str, float]:
    """Per series: the least floor under which fewer than MIN_WINDOWS_OUT windows leave the band.

    A window is inside when the run's median is within max(spread, floor) of the reference's
    q10..q90, so it needs no floor when within the spread, else a floor of its distance."""
    rs, ss = B.key_series(ref), B.key_series(run)
    out: dict[str, float] = {}
    for key, ref_series in rs.items():
        if key not in ss:
            continue
        name = key[0]
        unit = 1.0 if name in B.LOG_SERIES else B._scale(ref, name)
        need = sorted((b.distance / unit if b.distance > b.spread else 0.0
                       for b in B.bands(name, ref_series, ss[key], B._scale(ref, name), floor=0.0)), reverse=True)
        k = need[B.MIN_WINDOWS_OUT - 1] if len(need) >= B.MIN_WINDOWS_OUT else 0.0
        out[name] = max(out.get(name, 0.0), k)
    return out


def floor_of(name: str) -> float:
    """The floor analyze/baseline.py uses, in the units of the table (a bounded series' floor
    as a share of its range)."""
    return B.floor_of(name, 1.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=str(ROOT / "runs" / "calibrate_baseline"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--train", action="store_true", help="train the missing healthy runs first")
    ap.add_argument("--small", action="store_true",
                    help="the small config of tests/analyze/test_baseline.py instead of the defaults "
                         "(trained in-process, a few seconds a run); broken: its no-straight-through "
                         "and unstable-LR variants")
    a = ap.parse_args(argv)
    runs_dir = Path(a.runs) / ("small" if a.small else "")
    if a.small:
        return calibrate(*_small_population(runs_dir, a.seeds), argv, "calibrate_baseline_small")
    healthy: dict[str, list[Path]] = {r: [] for r in ROUTERS}
    broken = {b: SAMPLES / f"{b}.jsonl" for b in BROKEN}
    for b, flags in BROKEN_TRAINED.items():
        d = runs_dir / b
        if a.train and not (d / "run.jsonl").exists():
            subprocess.run([sys.executable, "-c", "from cli import main; main()", "train", "--quiet", "--seed", "1",
                            "--out", str(d), "--overwrite", *flags], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        if (d / "run.jsonl").exists():
            broken[b] = d / "run.jsonl"
    for router in ROUTERS:
        for seed in a.seeds:
            d = runs_dir / f"{router}_s{seed}"
            if a.train and not (d / "run.jsonl").exists():
                subprocess.run([sys.executable, "-c", "from cli import main; main()", "train", "--quiet",
                                "--seed", str(seed), "--router", router, "--out", str(d), "--overwrite"],
                               cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
            if (d / "run.jsonl").exists():
                healthy[router].append(d / "run.jsonl")
        if router in SAMPLE_HEALTHY:
            healthy[router].append(SAMPLES / f"{SAMPLE_HEALTHY[router]}.jsonl")
    return calibrate(healthy, broken, argv, "calibrate_baseline")


SMALL = dict(n_layers=2, n_heads=4, d_model=32, d_ff=64, max_len=64, pretrain_epochs=4, instruct_epochs=8,
             batch_size=64, instruct_batch_size=16, log_every=1, eval_prompts=4, eval_max_new_tokens=6,
             warmup_steps=2)
SMALL_BROKEN = {"no_straight_through": dict(straight_through=False, lb_weight=0, z_weight=0,
                                            complexity_weight=0, budget_weight=0),
                "unstable_lr": dict(lr=0.05, instruct_lr=0.05, grad_clip=0, warmup_steps=0),
                "squeezed_threshold": dict(tau_min=0.79, tau_max=0.8)}


def _small_population(runs_dir: Path, seeds: list[int]) -> tuple[dict, dict]:
    from moh.config import Config
    from moh.train import train

    def run(name: str, **kw) -> Path:
        d = runs_dir / name
        if not (d / "run.jsonl").exists():
            train(Config(**{**SMALL, "threads": 1, **kw}), d, overwrite=True)
        return d / "run.jsonl"

    healthy = {r: [run(f"{r}_s{s}", seed=s, router=r) for s in seeds] for r in ROUTERS}
    return healthy, {b: run(b, seed=seeds[0], **kw) for b, kw in SMALL_BROKEN.items()}


def calibrate(healthy: dict[str, list[Path]], broken_runs: dict[str, Path], argv, result: str) -> int:
    cache = {}

    def get(p: Path):
        if p not in cache:
            cache[p] = load_run(p)
        return cache[p]

    reseed: dict[str, list[float]] = defaultdict(list)
    worst: dict[str, str] = {}
    n_pairs = 0
    for router, paths in healthy.items():
        for ref, run in itertools.permutations(paths, 2):
            n_pairs += 1
            for name, need in needed_floors(get(run), get(ref)).items():
                if need > max(reseed[name], default=0.0):
                    worst[name] = f"{router}: {get(run).name} vs {get(ref).name}"
                reseed[name].append(need)
    broken: dict[str, dict[str, float]] = {}
    for b, path in broken_runs.items():
        lows: dict[str, float] = {}
        for ref in healthy["adaptive"]:
            for name, need in needed_floors(get(path), get(ref)).items():
                lows[name] = min(lows.get(name, math.inf), need)  # the least it deviates by
        broken[b] = lows
    names = sorted(reseed)
    rows = [[n, "log" if n in B.LOG_SERIES else "share of range", max(reseed[n]), floor_of(n),
             *(broken[b].get(n, float("nan")) for b in broken), worst.get(n, "-")] for n in names]
    print(f"{n_pairs} reseed pairs ({', '.join(f'{r}: {len(p)} runs' for r, p in healthy.items())}); "
          f"broken runs against each of {len(healthy['adaptive'])} healthy adaptive runs (least excess shown)")
    print(table(["series", "units", "reseeds need (max)", "floor used", *broken, "largest reseed need"], rows))
    ok = all(max(reseed[n]) < floor_of(n) for n in names)
    print(f"\nevery reseed inside its band: {'yes' if ok else 'NO'}")
    payload = {"pairs": n_pairs, "runs": {r: [str(p) for p in ps] for r, ps in healthy.items()},
               "reseed_need_max": {n: max(reseed[n]) for n in names}, "floor": {n: floor_of(n) for n in names},
               "broken_least_excess": broken, "reseeds_pass": ok,
               "command": "bench/calibrate_baseline.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"wrote {write_json(result, payload)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
