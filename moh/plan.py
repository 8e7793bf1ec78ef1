"""How many optimizer steps a run will take, from numbers its `run_start` record carries.

Torch-free, so both halves use it: `moh/data.py` cuts an epoch into this many batches, and a
live view of a log (`moh watch`) turns the config and data counts of `run_start` into a step
total and an ETA without running anything.
"""

from __future__ import annotations

from typing import Any

PHASE_KEYS = (  # (phase, examples key in run_start.data, epochs key, batch size key in config)
    ("pretrain", "pretrain_examples", "pretrain_epochs", "batch_size"),
    ("instruct", "instruct_examples", "instruct_epochs", "instruct_batch_size"),
)


def batches_per_epoch(n_examples: int, batch_size: int) -> int:
    """Global batches in one epoch: n // batch_size groups (the remainder is spread over the last
    ones, nothing is dropped), at least one when there is any example, none without."""
    if n_examples <= 0:
        return 0
    return max(1, n_examples // batch_size)


def planned_steps(run_start: dict[str, Any]) -> dict[str, dict[str, int]] | None:
    """{phase: {"epochs", "steps_per_epoch", "steps"}} for a moh run, or None when the record
    lacks the numbers (an imported log, an older schema). A phase with no steps is left out."""
    config, data = run_start.get("config") or {}, run_start.get("data") or {}
    out: dict[str, dict[str, int]] = {}
    for phase, n_key, e_key, b_key in PHASE_KEYS:
        n, epochs, bsz = data.get(n_key), config.get(e_key), config.get(b_key)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, epochs, bsz)) or bsz < 1:
            return None
        per = batches_per_epoch(n, bsz)
        if epochs > 0 and per > 0:
            out[phase] = {"epochs": epochs, "steps_per_epoch": per, "steps": epochs * per}
    return out
