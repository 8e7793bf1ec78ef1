"""Record-by-record comparison of two run.jsonl files with time fields removed (issue 12: `moh
train` through the Recorder must write what main wrote).

    .venv/bin/python bench/compare_runs.py A/run.jsonl B/run.jsonl [ignored_field ...]

Ignored always: time, elapsed, wall_s, run_id, checkpoint (a path); add fields a change adds
(e.g. `producer`). Floats must be equal to the bit (JSON round-trips float64 exactly), key order
too. Exit 0 when every record matches, 1 otherwise (the first five differences are printed).

How the issue-12 comparison was made (threads 1, so runs are deterministic): main's tree via
`git archive f029687 | tar -x -C /tmp/base`, run with PYTHONPATH=/tmp/base, against the branch:
  moh train -q --threads 1 --out D                                            (default, seed 1337)
  moh train -q --threads 1 --pretrain-epochs 2 --instruct-epochs 2 --set router=moh   --out D
  moh train -q --threads 1 --pretrain-epochs 2 --instruct-epochs 2 --set router=dense --out D
  moh train -q --threads 1 --pretrain-epochs 2 --instruct-epochs 2 --nproc 2 --out D  (gloo)
  the same with --set checkpoint_every=0, SIGINT once it logged 20 steps, then moh train --resume D
"""

from __future__ import annotations

import json
import sys

TIME_FIELDS = {"time", "elapsed", "wall_s", "run_id", "checkpoint"}


def differences(a, b, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in dict.fromkeys(list(a) + list(b)):
            if k not in a or k not in b:
                out.append(f"{path}.{k}: only in {'B' if k not in a else 'A'}")
            else:
                out += differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if (a == b and type(a) is type(b)) else [f"{path}: {a!r} != {b!r}"]


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: " + __doc__.strip().splitlines()[3].strip(), file=sys.stderr)
        return 2
    ignored = TIME_FIELDS | set(argv[2:])
    strip = lambda r: {k: v for k, v in r.items() if k not in ignored}  # noqa: E731
    a, b = ([json.loads(line) for line in open(p, encoding="utf-8")] for p in argv[:2])
    bad = order = 0
    for i, (x, y) in enumerate(zip(a, b)):
        d = differences(strip(x), strip(y))
        order += list(strip(x)) != list(strip(y))
        if d:
            bad += 1
            if bad <= 5:
                print(f"record {i} ({x.get('event')} step {x.get('step')}): " + "; ".join(d[:6]))
    print(f"{argv[0]} vs {argv[1]}: {len(a)} vs {len(b)} records, {bad} differ, key order differs in {order}")
    return 0 if bad == 0 and order == 0 and len(a) == len(b) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
