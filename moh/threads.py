"""How many torch CPU threads a training process uses (`threads = 0`, the default: automatic).

Automatic means the cores this process may run on (its CPU affinity, which a container or
`taskset` can narrow below `os.cpu_count()`), shared evenly between the ranks that torchrun
started on this machine (LOCAL_WORLD_SIZE), and no more than the cores other work leaves idle
(usable cores minus the whole part of the 1-minute load average), at least 1. On the 2-core
machine of docs/benchmarks.md: 2 threads for one process on an idle machine (1.33x faster than
1), 1 when another job keeps a core busy (there 2 threads were 6-7x SLOWER: each of the
thousands of small parallel regions per step waits for the thread that is not scheduled), and
1 per rank under `--nproc 2` (two ranks with 2 threads each would ask for 4 cores).

A run is deterministic for a given thread count; different counts may change the last bits
of float reductions (MKL splits sums by thread), and the automatic count depends on the load
at start, so runs meant to match bit for bit fix `threads` (the calibration population and
the tests use 1).
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


def busy_cores() -> int:
    """Cores other work keeps busy: the whole part of the 1-minute load average (0 if unknown)."""
    try:
        return int(os.getloadavg()[0])
    except (AttributeError, OSError):  # no load average on this platform
        return 0


def resolve(threads: int, busy: int | None = None) -> int:
    """The thread count for config value `threads` (0 = automatic, see the module note);
    `busy` overrides the measured busy cores (None = `busy_cores()`)."""
    if threads > 0:
        return threads
    cores = usable_cores()
    busy = busy_cores() if busy is None else busy
    return max(1, min(cores // local_ranks(), cores - busy))
