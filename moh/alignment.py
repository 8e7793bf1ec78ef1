"""Does a layer's allocation track difficulty? Rank correlation of routing against token loss.

The fully adaptive router's premise is that harder tokens get more heads. On a logged step
this module measures it per layer, over the step's target tokens (positions with a
next-token target, the same tokens the LM loss averages):

    complexity_loss_corr = Spearman(complexity c_t, LM loss of token t)
    heads_loss_corr      = Spearman(hard head count of token t, LM loss of token t)

Token t's router decides the heads that predict token t + 1, and token t's LM loss is the
loss of that prediction, so both are read at the same position. Spearman = Pearson of the
ranks, ties sharing their average rank (head counts are small integers: most tokens tie).

Null in the log (never a fake 0) where it does not apply or is undefined: routers with no
per-token budget (dense, moh: no complexity, and a head count fixed by design), fewer than
two tokens, or a series constant over the step (e.g. every token got the same head count).
Undefined values travel as NaN tensors up to the record (`moh.monitor.rows`), so measuring
them costs no host sync of its own.

Cost: the per-token losses come from the logits the forward pass already made (one
cross-entropy without reduction, `LM.forward(..., token_losses=True)`); the ranks are one
batched sort for all series of the step. Called on logging steps only. Under
torch.distributed the per-token values of every rank are gathered first
(`distributed.gather_columns`), so the figure is the whole job's, like every other layer
statistic (docs/distributed.md).
"""

from __future__ import annotations

import array
import ctypes
from typing import Callable

import torch
import torch.nn.functional as F

from . import native
from .routing import Routing

FIELDS = ("complexity_loss_corr", "heads_loss_corr")
# spearman_rows' sums are exact (so its bits are order-free, C or torch) below this many tokens:
# N^3 / 12 < 2^51 (see there)
EXACT_N = 300_000


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 0..N-1 along the last dim, tied values sharing the mean of their ranks (float64).

    Batched over leading dims: one sort for every series of a step (a few small ops instead
    of a unique() per series: the logged step's cost, bench/bench_telemetry.py). float32 on
    CPU: one pass of moh/native.c, the same values (ranks are exact half-integers)."""
    kernels = native.for_tensors(x) if x.numel() else None
    if kernels is not None:
        n = x.shape[-1]
        rows = x.contiguous()
        order, ranks = torch.empty(2, n, dtype=torch.int64), torch.empty(x.shape, dtype=torch.float64)
        at = order.data_ptr()  # its two rows by address (an index is an operation: ~5-10 us in a step)
        kernels.average_ranks(rows.numel() // n, n, rows.data_ptr(), at, at + 8 * n, ranks.data_ptr())
        return ranks
    s, order = x.sort(dim=-1)
    n = s.shape[-1]
    pos = torch.arange(n, dtype=torch.float64, device=x.device).expand(s.shape)
    first = F.pad(s[..., 1:] != s[..., :-1], (1, 0), value=True)  # does a run of equal values start here
    last = F.pad(first[..., 1:], (0, 1), value=True)  # does one end here
    start = torch.where(first, pos, 0.0).cummax(-1).values
    end = torch.where(last, pos, float(n)).flip(-1).cummin(-1).values.flip(-1)
    return torch.empty_like(pos).scatter_(-1, order, (start + end) / 2)


def spearman(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each row of x (..., N) with y (N,), as float64 (...).

    NaN where undefined: fewer than two tokens, or a constant series (nothing to order);
    the step record writes those as null. No host sync."""
    if x.shape[-1] < 2:
        return torch.full(x.shape[:-1], float("nan"), dtype=torch.float64, device=x.device)
    return _pearson(average_ranks(x), average_ranks(y))


def spearman_rows(table: torch.Tensor) -> torch.Tensor:
    """`spearman(table[1:], table[0])` for a (1 + K, N) table, ranked in one average_ranks
    call (each rank call is a dozen small operators: on a logged step they cost more than the
    arithmetic). Bit-identical to spearman(): a row's ranks do not depend on the other rows,
    and ranks are half-integers, so every sum below is exact in float64."""
    if table.shape[-1] < 2:
        return torch.full(table.shape[:1], float("nan"), dtype=torch.float64, device=table.device)[1:]
    # Average ranks of N values always sum to N (N - 1) / 2, so every row's mean is exactly
    # (N - 1) / 2 (a half-integer): centring by it is _pearson's mean subtraction, bit for bit,
    # for all rows in one operator.
    # Centred ranks are multiples of 1/2, so every product and sum below is a multiple of 1/4,
    # exact in float64 whatever its order while it stays under 2^51: the sums of squares are
    # about N^3 / 12, so for N below EXACT_N tokens a step. One matrix-vector product gives every
    # row's dot product with the loss row (its own sum of squares first).
    n = table.shape[-1]
    kernels = native.for_tensors(table) if table.dim() == 2 and n < EXACT_N else None
    if kernels is not None:  # the same in one C pass (moh/native.c spearman_rows)
        rows = table.contiguous()
        k = rows.shape[0]
        order, ranks = torch.empty(2, n, dtype=torch.int64), torch.empty(k * n + k - 1, dtype=torch.float64)
        at, out = order.data_ptr(), ranks.data_ptr()
        kernels.spearman_rows(k, n, rows.data_ptr(), at, at + 8 * n, out, out + 8 * k * n)
        return ranks[k * n:]  # (the correlations follow the ranks' scratch in one allocation)
    c = average_ranks(table) - (n - 1) / 2
    dot = c @ c[0]
    r = dot[1:] / (c[1:].square().sum(-1) * dot[0]).sqrt()  # 0 / 0 = NaN for a constant series
    return r.clamp(-1.0, 1.0)


def spearman_rows_at(y: torch.Tensor, rows: list[torch.Tensor], has: torch.Tensor) -> torch.Tensor | None:
    """`spearman_rows(stack([y, *(row[has] for row in rows)]))`: y (N,) the values of the tokens
    the bool mask `has` (n_all,) marks, each of `rows` n_all values, one per token. In one C
    pass that reads the rows at the marked tokens itself (moh/native.c spearman_rows_at), the
    same bits: on a logged step the selection, the head counts' sum and the table's
    concatenation were half a dozen operators, each ~15-20 us there. None when the kernels
    cannot take these tensors: the caller builds the table."""
    n, n_all, k = y.numel(), has.numel(), len(rows)
    kernels = native.for_tensors(y, *rows) if 2 <= n < EXACT_N and has.dtype == torch.bool else None
    if kernels is None or any(r.numel() != n_all for r in rows):
        return None
    y, has = y.contiguous(), has.contiguous()
    rows = [r if r.is_contiguous() else r.contiguous() for r in rows]
    addresses = array.array("q", [r.data_ptr() for r in rows])
    # one float64 scratch: ranks ((1 + k) * n), the correlations (k), the sort's two index
    # rows (2n int64), the marked count (1 int64) and the gathered float32 table ((1 + k) * n / 2)
    m = (1 + k) * n
    buf = torch.empty(m + k + 2 * n + 1 + (m + 1) // 2, dtype=torch.float64)
    at = buf.data_ptr()
    out, order = at + 8 * m, at + 8 * (m + k)
    found, table = order + 16 * n, order + 16 * n + 8
    kernels.spearman_rows_at(n_all, has.data_ptr(), n, y.data_ptr(), k, addresses.buffer_info()[0],
                             table, order, order + 8 * n, at, out, None, found)
    marked = ctypes.c_int64.from_address(found).value
    if marked != n:
        raise ValueError(f"{n} token values for {marked} marked tokens")
    return buf[m:m + k]


def _pearson(rx: torch.Tensor, ry: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of the ranks rx (..., N) with the ranks ry (N,)."""
    rx = rx - rx.mean(-1, keepdim=True)
    ry = ry - ry.mean(-1, keepdim=True)
    den = (rx.square().sum(-1) * ry.square().sum(-1)).sqrt()
    r = (rx * ry).sum(-1) / den  # 0 / 0 = NaN for a constant series
    return r.clamp(-1.0, 1.0)  # rounding must not leave [-1, 1]; NaN stays NaN


def loss_alignment(routings: list[Routing], has_target: torch.Tensor, token_loss: torch.Tensor | None,
                   gather: Callable[[torch.Tensor], torch.Tensor] | None = None
                   ) -> list[dict[str, torch.Tensor | None]]:
    """Per layer {complexity_loss_corr, heads_loss_corr}: 0-d tensors (NaN where undefined)
    or None where they do not apply.

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
    corr = spearman_rows(table)  # (2 * layers,)
    out = [dict(none) for _ in routings]
    for j, i in enumerate(adaptive):
        out[i] = {"complexity_loss_corr": corr[2 * j], "heads_loss_corr": corr[2 * j + 1]}
    return out
