"""A training run's long-lived objects kept out of the garbage collector's full passes.

CPython's cyclic collector makes a full (generation 2) pass over every tracked object once
enough objects have survived its younger passes. At the engine's size that is ~170,000 objects
(torch, the modules, the corpus) and ~50 ms a pass, and what a run allocates and drops every
step (step records, autograd's Python side) brings those passes on: in the paired telemetry
benchmark one fell inside the logging trainer's steps about every 1,000 log periods, 0.14 % of
its time on average, and as one 50 ms event in a 500-period measurement about half the spread
between repetitions (docs/benchmarks.md, "Tenth session"). `gc.freeze()` once the run is set up
moves everything alive then to a permanent generation that no pass visits; what the loop
allocates is still collected, by the young passes and by full ones that are now cheap.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def frozen() -> Iterator[None]:
    """Freeze the objects alive now for the block, then hand them back to the collector
    (train() is also a library call in someone's process). Where the process had frozen objects
    already, whoever froze them keeps managing them: nothing is done."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
