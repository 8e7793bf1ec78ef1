"""How many torch CPU threads a training process uses (`threads = 0`, the default: automatic).

Automatic means, in this order: the OMP_NUM_THREADS environment variable when it holds a
positive count (the usual way to tell a process how many cores it may use: a job scheduler, a
test runner that starts several trainings side by side, torchrun), else the cores this process
may run on (its CPU affinity, which a container or `taskset` can narrow below `os.cpu_count()`)
shared evenly between the ranks torchrun started on this machine (LOCAL_WORLD_SIZE), at least 1.
On the 2-core machine of docs/benchmarks.md: 2 threads for one process on an idle machine (1.33x
faster than 1) and 1 per rank under `--nproc 2`.

The count never depends on how busy the machine is, so the same command gives the same
run.jsonl on the same machine. That has a price worth knowing: 2 threads on cores that other
jobs keep busy were measured 6-12x SLOWER than 1 (each of the thousands of small parallel
regions per step waits for the thread that is not scheduled); on a shared machine pass
`--threads 1` or set OMP_NUM_THREADS=1 (the test suite does). A run is deterministic for a
given thread count; different counts may change the last bits of float reductions.
"""

from __future__ import annotations

import os


def usable_cores() -> int:
    """Cores this process may be scheduled on (affinity-aware where the OS says)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not on Linux: no affinity call
        return os.cpu_count() or 1


def local_ranks() -> int:
    """Processes torchrun started on this machine (1 outside torchrun or on a bad value)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def from_environment() -> int:
    """A positive OMP_NUM_THREADS, else 0 (unset, empty or not a positive whole number)."""
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return 0


def resolve(threads: int) -> int:
    """The thread count for config value `threads` (0 = automatic, see the module note)."""
    if threads > 0:
        return threads
    return from_environment() or max(1, usable_cores() // local_ranks())
