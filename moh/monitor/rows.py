"""Per-layer statistic tensors -> the JSON-ready `layers` entries of a step record.

One host sync for every layer's values together (`torch.cat(...).tolist()`), on logged steps
only. Values are written as float32, the precision the statistics are computed in on one
process (`routing.layer_stats`); a rank correlation that is undefined on a step travels as
NaN up to here (moh/alignment.py) and is written as null.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import schema

LIST_STATS = ("head_load", "heads_hist", "prob_mean")  # per-unit / per-count lists


def layer_rows(stats: list[dict[str, Any]], layers: list[int] | None = None) -> list[dict]:
    """`stats[i]` (field -> 0-d/1-d tensor or None) as the entry of layer `layers[i]`
    (default: i)."""
    flat: list[torch.Tensor] = []
    for s in stats:
        for v in s.values():
            if v is not None:
                flat.append(v.reshape(-1).float())
    values = torch.cat(flat).tolist() if flat else []
    pos, rows = 0, []
    for i, s in enumerate(stats):
        row: dict[str, Any] = {"layer": i if layers is None else layers[i]}
        for k, v in s.items():
            if v is None:
                row[k] = None
                continue
            n = v.numel()
            chunk = values[pos : pos + n]
            pos += n
            row[k] = chunk if k in LIST_STATS else chunk[0]
            if k in schema.ALIGNMENT_STATS and row[k] != row[k]:
                row[k] = None  # NaN: a rank correlation undefined on this step (moh/alignment.py)
        rows.append(schema.layer_row(**row))
    return rows
