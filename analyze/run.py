"""`Run`: a loaded telemetry log as pandas frames, the shape every analysis step consumes.

The loader (`analyze.loader`) builds it from `run.jsonl` (or an imported reference log);
criteria, findings, reports and plots read it and never mutate it.

Frames and their columns (a column is absent when no record carried that field):

steps      one row per `step` record, sorted by step, duplicates resolved (last write wins):
           step, epoch, phase, time, elapsed, loss, lm_loss, lr, grad_norm, grad_norm_clipped,
           tokens, tokens_per_s, skipped,
           grad.<group> for each of schema.GRAD_GROUPS,
           aux.<term>   for each of schema.AUX_TERMS
           plus any other numeric top-level scalar found in step records.
layers     long frame, one row per (step, layer): step, phase, layer, label, and every
           schema.LAYER_STATS column (heads_mean ... pred_norm); NaN where a stat is absent/null.
head_load  long frame, one row per (step, layer, head): step, layer, head, load
           (and prob, when the record carried prob_mean).
evals      one row per `eval` record: step, phase, loss, exact_match, n_samples.
samples    one row per eval sample: step, phase, prompt, expected, output, match.
alerts     one row per `alert` record: step, level, code, message.

meta       the run_start record as a dict ({} when missing), with `semantics` filled from
           schema.DEFAULT_SEMANTICS for keys the log did not state.
end        the run_end record as a dict, or None when the run has no end (killed, running).
resumes    list of `resume` records.
notes      human-readable loader remarks (skipped truncated line, steps restarted after a
           resume, bad lines with their numbers); the CLI prints them on stderr.
path       the file the run was read from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from moh import schema


@dataclass(frozen=True)
class Run:
    path: Path
    meta: dict
    steps: pd.DataFrame
    layers: pd.DataFrame
    head_load: pd.DataFrame
    evals: pd.DataFrame
    samples: pd.DataFrame
    alerts: pd.DataFrame
    end: dict | None = None
    resumes: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def name(self) -> str:
        """Short label for legends and comparison columns: the run directory or file stem."""
        return self.path.parent.name if self.path.name == "run.jsonl" else self.path.stem

    @property
    def semantics(self) -> dict:
        return self.meta.get("semantics", {})

    @property
    def n_heads(self) -> int | None:
        return (self.meta.get("model") or {}).get("n_heads")

    @property
    def generic(self) -> bool:
        """Written by something other than `moh train`: run_start names another producer
        (moh.monitor.Recorder on a user's model writes "moh.monitor"). Such a run is judged
        without the engine's targets (generic criteria, no 0.40 loss bar in the loss rules).
        Logs without a producer (moh train before the field existed, imports) are the engine's."""
        producer = self.meta.get("producer")
        return producer is not None and producer != schema.PRODUCER_TRAIN

    @property
    def unit(self) -> str:
        """What the run routes, "head" or "expert" (run_start.routing.unit; logs without the block
        are the engine's or the reference trainer's: heads)."""
        return (self.meta.get("routing") or {}).get("unit") or "head"

    @property
    def router(self) -> str | None:
        return (self.meta.get("model") or {}).get("router")


def layer_block(layers: pd.DataFrame) -> list[int] | None:
    """The layer numbers of the first step when every step's rows are exactly those layers, in the
    same order, with steps increasing (the loader's layout for every engine log); else None.

    Then layer `block[j]` is every len(block)-th row from row j: a strided view, no sort or copy.
    """
    if not len(layers) or "layer" not in layers or "step" not in layers:
        return None
    layer, step = layers["layer"].to_numpy(), layers["step"].to_numpy()
    if not np.all(step[1:] >= step[:-1]):
        return None
    n_block = int(np.searchsorted(step, step[0], side="right"))
    if len(layer) % n_block:
        return None
    block = layer[:n_block]
    if len(np.unique(block)) != n_block:
        return None
    grid_l, grid_s = layer.reshape(-1, n_block), step.reshape(-1, n_block)
    if not (np.array_equal(grid_l, np.broadcast_to(block, grid_l.shape))
            and np.all(grid_s == grid_s[:, :1]) and np.all(grid_s[1:, 0] > grid_s[:-1, 0])):
        return None
    return [int(li) for li in block]
