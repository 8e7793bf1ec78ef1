"""How many torch CPU threads a training process uses (`threads = 0`, the default: automatic).

Automatic means the cores this process may run on (its CPU affinity, which a container or
`taskset` can narrow below `os.cpu_count()`), shared evenly between the ranks that torchrun
started on this machine (LOCAL_WORLD_SIZE), at least 1. On the 2-core machine of
docs/benchmarks.md that is 2 threads for one process and 1 per rank under `--nproc 2`: two
ranks with 2 threads each would ask for 4 cores and spin-wait on each other's.

A run is deterministic for a given thread count; different counts may change the last bits
of float reductions (MKL splits sums by thread), so runs meant to match bit for bit fix
`threads` (the calibration population uses `--threads 1`).
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


def resolve(threads: int) -> int:
    """The thread count for config value `threads` (0 = automatic, see the module note)."""
    if threads > 0:
        return threads
    return max(1, usable_cores() // local_ranks())
