"""Several telemetry groups' parameters in the rows of one tensor.

A fused projection keeps what are logically separate parameters in one tensor, because each
parameter tensor costs bookkeeping in every step (the engine's adaptive router holds W_r and
both predictors in one matrix: moh/routing.py). Its gradient-norm groups must still be told
apart, so the module that owns such a tensor declares

    grad_rows = {parameter name in the module: {group: (first row, end row)}}

and each block of rows counts toward its own group as a `RowBlock` (moh.optim.grad_norms). Any
module of a user's model may declare it too; the Recorder's grouping reads it the same way.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, NamedTuple

import torch
import torch.nn as nn


class RowBlock(NamedTuple):
    """Rows [start, stop) of `param` (dim 0): the part of a fused tensor one group owns."""

    param: torch.Tensor
    start: int
    stop: int


def row_blocks(model: nn.Module) -> dict[str, dict[str, tuple[int, int]]]:
    """Qualified parameter name -> {group: (first row, end row)}, from the `grad_rows` of the
    modules that declare one."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for mod_name, m in model.named_modules():
        rows = getattr(m, "grad_rows", None)
        if isinstance(rows, Mapping):
            for pname, blocks in rows.items():
                out[f"{mod_name}.{pname}" if mod_name else pname] = dict(blocks)
    return out


def group_members(model: nn.Module, group_of_name: Callable[[str], str], keys: Iterable[str]) -> dict[str, list]:
    """Group name -> its parameters (and `RowBlock`s of fused ones) that require a gradient,
    every key of `keys` present (empty where nothing falls in it)."""
    out: dict[str, list] = {g: [] for g in keys}
    rows = row_blocks(model)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name in rows:
            for g, (start, stop) in rows[name].items():
                out.setdefault(g, []).append(RowBlock(p, start, stop))
        else:
            out.setdefault(group_of_name(name), []).append(p)
    return out
