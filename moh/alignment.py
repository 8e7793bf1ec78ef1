"""Does a layer's allocation track difficulty? Rank correlation of routing against token loss.

The fully adaptive router's premise is that harder tokens get more heads. On a logged step
this module measures it per layer, over the step's target tokens (positions with a
next-token target, the same tokens the LM loss averages):

    complexity_loss_corr = Spearman(complexity c_t, LM loss of token t)
    heads_loss_corr      = Spearman(hard head count of token t, LM loss of token t)

Token t's router decides the heads that predict token t + 1, and token t's LM loss is the
loss of that prediction, so both are read at the same position. Spearman = Pearson of the
ranks, ties sharing their average rank (head counts are small integers: most tokens tie).

Null (never a fake 0) where it does not apply or is undefined: routers with no per-token
budget (dense, moh: no complexity, and a head count fixed by design), fewer than two
tokens, or a series constant over the step (e.g. every token got the same head count).

Cost: the per-token losses come from the logits the forward pass already made (one
cross-entropy without reduction, `LM.forward(..., token_losses=True)`); the ranks are one
sort per series. Called on logging steps only. Under torch.distributed the per-token
values of every rank are gathered first (`distributed.gather_columns`), so the figure is
the whole job's, like every other layer statistic (docs/distributed.md).
"""

from __future__ import annotations

from typing import Callable

import torch

from .routing import Routing

FIELDS = ("complexity_loss_corr", "heads_loss_corr")


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 0..N-1 of a 1-d tensor, tied values sharing the mean of their ranks (float64)."""
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    counts = counts.to(torch.float64)
    first = counts.cumsum(0) - counts  # rank of each distinct value's first occurrence
    return (first + (counts - 1) / 2)[inverse]


def spearman(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
    """Spearman rank correlation of two 1-d tensors (0-d float64), None when undefined."""
    if x.numel() < 2:
        return None
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = (rx.square().sum() * ry.square().sum()).sqrt()
    if float(den) == 0.0:  # a constant series: no ordering to correlate
        return None
    return ((rx * ry).sum() / den).clamp(-1.0, 1.0)  # rounding must not leave [-1, 1]


def loss_alignment(routings: list[Routing], has_target: torch.Tensor, token_loss: torch.Tensor | None,
                   gather: Callable[[torch.Tensor], torch.Tensor] | None = None
                   ) -> list[dict[str, torch.Tensor | None]]:
    """Per layer {complexity_loss_corr, heads_loss_corr} (0-d tensors or None).

    has_target (B, T) bool: positions with a next-token target; token_loss (N,) the LM loss
    of those positions in row-major order (None: not measured this step, every field None).
    `gather` (R, n) -> (R, N_job) joins the ranks' columns (None = one process).
    """
    none = {f: None for f in FIELDS}
    adaptive = [i for i, r in enumerate(routings) if r.complexity is not None]
    if token_loss is None or not adaptive:
        return [dict(none) for _ in routings]
    sel = has_target.reshape(-1)
    cols = [token_loss.detach().float()]
    for i in adaptive:
        r = routings[i]
        cols.append(r.complexity.detach().reshape(-1)[sel].float())
        cols.append(r.hard.sum(-1).reshape(-1)[sel].float())  # exact small integers
    table = torch.stack(cols)  # (1 + 2 * layers, N)
    if gather is not None:
        table = gather(table)
    out = [dict(none) for _ in routings]
    loss = table[0]
    for j, i in enumerate(adaptive):
        out[i] = {"complexity_loss_corr": spearman(table[1 + 2 * j], loss),
                  "heads_loss_corr": spearman(table[2 + 2 * j], loss)}
    return out
