"""Mutation testing as a benchmark: how many semantic one-line bugs do the fast tests catch?

    .venv/bin/python bench/mutation.py                 # every mutant in bench/mutants.py
    .venv/bin/python bench/mutation.py --only budget_rank_le lr_times_1e-6
    .venv/bin/python bench/mutation.py --list          # the catalogue, nothing run
    .venv/bin/python bench/mutation.py --tests-from main   # the same mutants against main's tests

Each mutant (bench/mutants.py) names a file, an exact original snippet, its replacement, what
it breaks and the fast test files that should notice. The tracked and untracked (not ignored)
files of the working tree are copied once into a temporary directory -- the working tree is
never touched -- and for each mutant: the snippet is replaced in the copy, the mutant's tests
run there (`pytest -x -m "not slow"`, PYTHONPATH = the copy, so the copy's modules are the ones
imported, in subprocesses too), and the file is restored.

Outcomes: killed (a test failed), survived (all passed), timeout (counted as killed: the
tests did not pass), error (the snippet is not in the file or not unique -- the code moved
under the catalogue -- or pytest could not run: collection error, no tests). Equivalent
mutants (no behaviour can change; the catalogue says why) are run and listed but left out of
the score. Score = killed / non-equivalent mutants, errors counted as not killed, so a stale
catalogue lowers the score rather than hiding. Before any mutant, the tests run once on the
unmutated copy: a red baseline stops the benchmark (a mutant "killed" by an already failing
test proves nothing).

`--tests-from REV` replaces the copy's tests/ with those of git revision REV (the code stays the
working tree's) and keeps, per mutant, only the test files that exist there: how many of these
bugs an older suite caught. JSON: bench/results/mutation.json (or mutation_<REV>.json). Exit code: 0 when the score reaches --goal (default 0.8)
and no mutant errored, 1 otherwise, 2 on bad arguments or a red baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from mutants import MUTANTS, Mutant  # noqa: E402

RESULTS = ROOT / "bench" / "results"


class SnippetError(Exception):
    """The mutant's original snippet is absent from its file, or there more than once."""


def mutate(text: str, m: Mutant) -> str:
    n = text.count(m.original)
    if n != 1:
        raise SnippetError(f"snippet found {n} times in {m.file} (needs exactly 1): {m.original!r}")
    return text.replace(m.original, m.replacement)


def copy_tree(dest: Path) -> Path:
    """The working tree's tracked + untracked-not-ignored files under dest/repo; a `shared`
    link next to it, where the tests look for ../shared."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    repo = dest / "repo"
    for f in files:
        if not f:
            continue
        src = ROOT / os.fsdecode(f)
        if not src.is_file():  # deleted in the working tree but still in the index
            continue
        dst = repo / os.fsdecode(f)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    shared = ROOT.parent / "shared"
    if shared.is_dir():
        (dest / "shared").symlink_to(shared)
    return repo


def use_tests_from(repo: Path, rev: str) -> None:
    """Replace repo/tests with revision `rev`'s tests/ (from git, the working tree untouched)."""
    shutil.rmtree(repo / "tests")
    archive = subprocess.run(["git", "archive", rev, "tests"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "xf", "-", "-C", str(repo)], input=archive, check=True)


def existing(repo: Path, tests: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(t for t in tests if (repo / t.split("::")[0]).is_file())


def run_tests(repo: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, float, str]:
    """(outcome of pytest on the copy: pass / fail / timeout / error, seconds, last output lines)."""
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow",
           "-o", "addopts=", *tests]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.time() - t0, ""
    tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-6:])
    outcome = {0: "pass", 1: "fail"}.get(p.returncode, "error")
    return outcome, time.time() - t0, tail


def check_imports_from(repo: Path) -> None:
    """The copy's modules, not the editable install's, are what a test process imports."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    code = "import moh, analyze, cli; print(moh.__file__, analyze.__file__, cli.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    for path in out:
        if not Path(path).resolve().is_relative_to(repo.resolve()):
            raise SystemExit(f"error: the test processes would import {path}, not the copy in {repo}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", metavar="ID", help="run only these mutants")
    ap.add_argument("--list", action="store_true", help="print the catalogue and exit")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant's test run")
    ap.add_argument("--goal", type=float, default=0.8, help="kill rate the exit code asks for")
    ap.add_argument("--json", default=None, help="result file (default bench/results/mutation[_REV].json; '' = none)")
    ap.add_argument("--tests-from", metavar="REV", help="run the mutants against the tests of git revision REV")
    a = ap.parse_args(argv)

    ids = [m.id for m in MUTANTS]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        print(f"error: duplicate mutant ids: {', '.join(dup)}", file=sys.stderr)
        return 2
    chosen = MUTANTS
    if a.only:
        unknown = sorted(set(a.only) - set(ids))
        if unknown:
            print(f"error: no mutant named {', '.join(unknown)}", file=sys.stderr)
            return 2
        chosen = [m for m in MUTANTS if m.id in a.only]
    if a.list:
        for m in chosen:
            eq = f"  [equivalent: {m.equivalent}]" if m.equivalent else ""
            print(f"{m.id:28} {m.kind:18} {m.file:28} {m.breaks}{eq}")
        return 0

    if a.json is None:
        a.json = str(RESULTS / (f"mutation_{a.tests_from.replace('/', '_')}.json" if a.tests_from else "mutation.json"))
    t_start, load0 = time.time(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="moh-mutation-") as tmp:
        repo = copy_tree(Path(tmp))
        check_imports_from(repo)
        if a.tests_from:
            use_tests_from(repo, a.tests_from)
            chosen = [replace(m, tests=existing(repo, m.tests)) for m in chosen]
        every_test = tuple(sorted({t for m in chosen for t in m.tests}))
        print(f"baseline: {len(every_test)} test files on the unmutated copy ...", flush=True)
        outcome, secs, tail = run_tests(repo, every_test, a.timeout * 2)
        if outcome != "pass":
            print(f"error: the tests do not pass on the unmutated tree ({outcome}):\n{tail}", file=sys.stderr)
            return 2
        print(f"baseline green in {secs:.0f} s", flush=True)
        rows = []
        for k, m in enumerate(chosen, 1):
            path = repo / m.file
            row = {"id": m.id, "kind": m.kind, "file": m.file, "breaks": m.breaks,
                   "equivalent": m.equivalent, "tests": list(m.tests)}
            if not m.tests:  # --tests-from: no test of this behaviour existed there
                rows.append(row | {"outcome": "survived", "seconds": 0.0, "detail": "no test file"})
                print(f"[{k}/{len(chosen)}] survived {m.id:28}    no test file", flush=True)
                continue
            try:
                original = path.read_text(encoding="utf-8")
                path.write_text(mutate(original, m), encoding="utf-8")
            except (SnippetError, OSError) as e:
                row |= {"outcome": "error", "seconds": 0.0, "detail": str(e)}
            else:
                try:
                    result, secs, tail = run_tests(repo, m.tests, a.timeout)
                finally:
                    path.write_text(original, encoding="utf-8")
                outcome = {"pass": "survived", "fail": "killed", "timeout": "timeout"}.get(result, "error")
                row |= {"outcome": outcome, "seconds": round(secs, 1),
                        "detail": tail.splitlines()[-1] if tail and outcome != "survived" else ""}
            rows.append(row)
            print(f"[{k}/{len(chosen)}] {row['outcome']:8} {m.id:28} {row['seconds']:6.1f}s  "
                  f"{'(equivalent) ' if m.equivalent else ''}{row['detail'][:90]}", flush=True)

    scored = [r for r in rows if not r["equivalent"]]
    killed = [r for r in scored if r["outcome"] in ("killed", "timeout")]
    survivors = [r for r in scored if r["outcome"] == "survived"]
    errors = [r for r in rows if r["outcome"] == "error"]
    score = len(killed) / len(scored) if scored else 0.0
    print(f"\nkilled {len(killed)} of {len(scored)} non-equivalent mutants: {100 * score:.1f}% "
          f"(goal {100 * a.goal:.0f}%); {len(rows) - len(scored)} equivalent; {len(errors)} errors")
    for r in survivors:
        print(f"  survived: {r['id']} ({r['file']}): {r['breaks']}")
    for r in errors:
        print(f"  error:    {r['id']} ({r['file']}): {r['detail']}")
    for r in rows:
        if r["equivalent"]:
            print(f"  equivalent: {r['id']} ({r['outcome']}): {r['equivalent']}")
    elapsed = time.time() - t_start
    print(f"{elapsed:.0f} s; load average {load0[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    if a.json and not a.only:
        RESULTS.mkdir(parents=True, exist_ok=True)
        payload = {"bench": "mutation", "tests_from": a.tests_from, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                   "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                   "loadavg_start": load0, "loadavg_end": os.getloadavg(), "seconds": round(elapsed),
                   "score": score, "killed": len(killed), "non_equivalent": len(scored),
                   "equivalent": len(rows) - len(scored), "errors": len(errors),
                   "survivors": [r["id"] for r in survivors], "mutants": rows}
        Path(a.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 0 if score >= a.goal and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
