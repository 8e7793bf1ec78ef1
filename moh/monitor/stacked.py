"""A logged step's `layers` entries for all layers at once, on one process (issue 14).

`routing.layer_stats` per layer + `alignment.loss_alignment` + `rows.layer_rows` is the
reference; on the engine's shapes (N ~ 224 tokens x 8 heads) its cost is the dispatch of a
few hundred small operators, not arithmetic. When every layer of the step has the same shapes,
dtypes, fields and `valid` tensor (the engine's case, and a user model with identical blocks),
this path stacks the layers into (L, N, H) tensors and makes each reduction once, indexes the
valid and target tokens once each, ranks the loss and every layer's series in one call, and
reads every value with one `tolist()`. On the CPU three passes of moh/native.c do all of it into
one buffer: `head_count_stats` (every layer's head counts and their statistics),
`series_stats` (the float series: thresholds, complexities, the entropy term, pred_norm,
prob_mean) and `spearman_rows_at` (the loss alignment, reading the target tokens itself).
When the layers cannot be stacked `rows()` returns None and the caller takes the reference path.

The written values are bit-identical to the reference (tests/moh/test_monitor_stacked.py
compares them field by field, with the kernels and without): each reduction runs over the same
tokens in the same order, only batched over a leading layer dimension, or its value does not
depend on the order: the float series' means are float64 sums rounded once to float32, here and
in routing.layer_stats (two double sums of a few thousand float32 values in different orders
straddle a float32 rounding boundary for ~2^-29 of values). Reductions whose bits could depend
on the batching (heads_std's Welford / two-pass choice) stay per layer in torch; the C pass
reproduces torch's 1-d std order below its parallel grain (`_STD_GRAIN`).
"""

from __future__ import annotations

import array
from typing import Any

import torch

from .. import native, schema
from ..alignment import spearman_rows, spearman_rows_at
from ..routing import Routing

_F32 = torch.float32


def _signature(r: Routing) -> tuple:
    """Shape and dtype of each field the step record reads (None where absent)."""
    return tuple(None if t is None else (t.shape, t.dtype)
                 for t in (r.hard, r.probs, r.tau, r.complexity, r.pred_norm))


def stackable(parts: list[tuple[Routing, torch.Tensor]]) -> bool:
    """Every layer seen once, with one `valid` tensor and matching routing fields (shapes and
    dtypes: torch.stack would promote a narrower dtype, changing its bits). Devices are not
    compared: the reference cannot mix them either (its values meet in one torch.cat)."""
    if not parts:
        return False
    r0, valid = parts[0]
    sig = _signature(r0)
    if any(v is not valid or _signature(r) != sig for r, v in parts[1:]):
        return False
    if valid.dtype != torch.bool or valid.numel() * r0.hard.shape[-1] != r0.hard.numel():
        return False  # the reference's boolean indexing decides what happens
    if r0.tau is not None and r0.complexity is not None and r0.tau.dtype != r0.complexity.dtype:
        return False  # stacked together below: a promotion would change the narrower one's bits
    return r0.pred_norm is None or r0.pred_norm.numel() == 1


def _take(t: torch.Tensor, idx: torch.Tensor | None, n: int) -> torch.Tensor:
    """t (L, n, ...) at the tokens idx along dim 1; t itself when idx is None or every token in
    order (a batch without padding: the copy would hold the same values in the same layout)."""
    return t if idx is None or idx.numel() == n else t.index_select(1, idx)


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == _F32 else t.float()


# torch's 1-d CPU std sums its squared deviations in token order below this many elements
# (at::internal::GRAIN_SIZE); native.c head_count_stats reproduces that order only
_STD_GRAIN = 32768


def _head_counts_native(rs: list[Routing], v: torch.Tensor, H: int, full: bool, tail: int
                        ) -> tuple[torch.Tensor, int] | None:
    """One float32 buffer: every token's head count (L * B*T: (L, B*T) at its start), the
    head-count statistics laid out as rows() reads them, and `tail` values more for the rest of
    the record, filled by one pass of native.c head_count_stats over the layers' selections;
    with the number of valid tokens. None where the kernel cannot take them (the caller's torch
    ops)."""
    BT = v.numel()
    if BT >= _STD_GRAIN or BT * H >= 2 ** 24 or H > native.MAX_HEADS or not v.is_cpu:
        return None
    for r in rs:
        if r.hard.dtype is not torch.bool or not r.hard.is_cpu or not r.hard.is_contiguous():
            return None
    kernels = native.lib()
    if kernels is None:
        return None
    v = v if v.is_contiguous() else v.contiguous()
    L = len(rs)
    buf = torch.empty(L * BT + _count_stats(L, H, full) + tail, dtype=_F32)
    hards, found = array.array("q", [r.hard.data_ptr() for r in rs]), array.array("q", [0])
    at = buf.data_ptr()
    kernels.head_count_stats(L, BT, H, hards.buffer_info()[0], v.data_ptr(), int(full), at, at + 4 * L * BT,
                             found.buffer_info()[0])
    return buf, found[0]


def _count_stats(L: int, H: int, full: bool) -> int:
    """How many head-count statistics a record has: mean, min, max, std (L each), head_load
    (L * H), heads_hist (L * (H + 1), full)."""
    return 4 * L + L * H + (L * (H + 1) if full else 0)


def _series_native(rs: list[Routing], per_token: list[str], v: torch.Tensor, n: int, full: bool,
                   at: int) -> bool:
    """The float series' mean / min / max rows, pred_norm and (full) prob_mean, written at the
    address `at` as rows() lays them out, by one pass of native.c series_stats; False (nothing
    written) where the kernel cannot take the fields."""
    r0 = rs[0]
    fields = [getattr(r, a) for a in per_token for r in rs]
    probs = [r.probs for r in rs] if r0.probs is not None else []
    preds = [r.pred_norm for r in rs] if r0.pred_norm is not None else []
    if probs and r0.probs.shape[-1] > native.MAX_HEADS:
        return False
    for t in (*fields, *probs, *preds):
        if t.dtype is not _F32 or not t.is_cpu or not t.is_contiguous():
            return False
    kernels = native.lib()
    if kernels is None:
        return False
    series = array.array("q", [t.data_ptr() for t in fields])
    p = array.array("q", [t.data_ptr() for t in probs])
    pred = array.array("q", [t.data_ptr() for t in preds])
    kernels.series_stats(v.numel(), v.data_ptr(), n, len(fields), series.buffer_info()[0] if fields else None,
                         len(rs), r0.probs.shape[-1] if probs else 0, p.buffer_info()[0] if probs else None,
                         pred.buffer_info()[0] if preds else None, int(full), at)
    return True


def rows(parts: list[tuple[Routing, torch.Tensor]], layers: list[int], full: bool,
         has_target: torch.Tensor | None, token_loss: torch.Tensor | None) -> list[dict] | None:
    """The step record's `layers` (as `Recorder._layer_rows` on one process writes them), or
    None when the layers cannot be stacked (the caller then reduces layer by layer).
    `has_target` None: no alignment fields; else `token_loss` None writes them as null."""
    if not stackable(parts):
        return None
    if has_target is not None and (has_target.dtype != torch.bool or has_target.numel() != parts[0][1].numel()):
        return None
    rs = [r for r, _ in parts]
    v = parts[0][1].reshape(-1)
    BT = v.numel()
    L, r0 = len(rs), rs[0]
    H = r0.hard.shape[-1]
    Hp = 0 if r0.probs is None else r0.probs.shape[-1]
    # every per-token series whose mean / min / max is logged, one row each: (the head counts, L,
    # on the torch path) threshold (L) and complexity (L) where present, then each token's sum of
    # p log p (L; the entropy is minus its mean, negated in _assemble: mean(-x) is -mean(x) to
    # the bit)
    per_token = [a for a in ("tau", "complexity") if getattr(r0, a) is not None]
    aligned = has_target is not None and token_loss is not None and "complexity" in per_token
    S = L * (len(per_token) + (Hp > 0))
    tail = 3 * S + (L if r0.pred_norm is not None else 0) + (L * Hp if full else 0) + (2 * L if aligned else 0)
    # The head counts: every token's (L, B*T; small integers, exact in float32: the alignment
    # reads its target tokens), and their statistics over the valid tokens, `cstats`: mean, min,
    # max and std per layer, head_load, heads_hist (full). In C where it can, into one buffer
    # that the other C passes fill after them; else torch ops.
    native_counts = _head_counts_native(rs, v, H, full, tail)
    if native_counts is not None:
        buf, N = native_counts
        counts_all = buf[:L * BT].view(L, BT)
        if N == 0:  # the reference's min() of no tokens raises: let it say so
            return None
        at = L * BT + _count_stats(L, H, full)
        if _series_native(rs, per_token, v, N, full, buf.data_ptr() + 4 * at):
            # every value in the buffer: the alignment's too, or copied in after
            corr = None
            if aligned:
                corr = _alignment([r.complexity for r in rs], counts_all, has_target, token_loss,
                                  out32=buf.data_ptr() + 4 * (buf.numel() - 2 * L))
                if corr is not None:
                    buf[-2 * L:] = corr
            vals = buf[L * BT:].tolist()
            return _assemble(vals, L, H, r0, layers, per_token, full, has_target is not None, aligned)
        cstats = buf[L * BT:at]
        idx = None if N == BT else v.nonzero().squeeze(1)  # (None: every token is valid)
        series = []
    else:
        idx = v.nonzero().squeeze(1)  # the valid tokens, once for every field of every layer
        N = idx.numel()
        if N == 0:
            return None
        hard_all = torch.stack([r.hard for r in rs]).reshape(L, -1, H)  # (L, B*T, H) bool
        hard = _take(hard_all, idx, BT)  # (L, N, H) bool
        counts_all = hard_all.sum(-1, dtype=_F32)
        counts = _take(counts_all, idx, BT)  # (L, N)
        series = [counts]  # its mean / min / max from the table below
    # one mean and one aminmax serve all layers and fields; the means in float64, rounded once
    # (as routing.layer_stats: the value does not depend on the sum's order). The head counts'
    # sums are exact integers, their float64 quotient rounds to the float32 one.
    tc_all = None
    if per_token:
        tc_all = torch.stack([getattr(r, a) for a in per_token for r in rs]).reshape(len(per_token) * L, -1)
        series.append(_take(tc_all, idx, BT))
    p = None
    if Hp:
        p = _take(torch.stack([r.probs for r in rs]).reshape(L, -1, Hp), idx, BT).double()  # (L, N, Hp)
        series.append((p * p.clamp_min(1e-12).log()).sum(-1))
    flat: list[torch.Tensor] = []
    if series:
        table = torch.cat(series) if len(series) > 1 else series[0]
        mean = table.double().mean(-1)
        lo, hi = table.aminmax(dim=-1)
    if native_counts is not None:
        flat.append(cstats)
    else:
        # std stays per layer: a 1-d std() (all-reduce kernel) and a row-wise std(-1) are not
        # guaranteed to round alike
        std = torch.stack([c.std(unbiased=False) for c in counts.unbind()])  # (one op for the rows)
        # head_load: mean() is sum() then a division by N; the sums of 0/1 are exact either way
        flat += [mean[:L], lo[:L], hi[:L], std, hard.sum(1, dtype=_F32) / N]
        mean, lo, hi = mean[L:], lo[L:], hi[L:]
        if full:
            # one bincount for every layer: layer l's counts (0..H) offset into bins l * (H + 1)
            off = torch.arange(L, device=counts.device).unsqueeze(1) * (H + 1)
            bins = torch.bincount((counts.long() + off).reshape(-1), minlength=L * (H + 1))
            flat.append(bins.float() / N)
    if per_token or p is not None:  # the float series' rows (after the counts' on the torch path)
        flat += [mean, lo, hi]
    if r0.pred_norm is not None:
        flat.append(torch.stack([r.pred_norm for r in rs]))  # (L,) or (L, 1): one value each
    if full and p is not None:
        flat.append(p.mean(1))
    corr = None
    if aligned:
        corr = _alignment(list(tc_all[per_token.index("complexity") * L:]), counts_all, has_target, token_loss)
        flat.append(corr)
    # one host sync for every value of the step
    vals = torch.cat([_f32(t if t.dim() == 1 else t.reshape(-1)) for t in flat]).tolist()
    return _assemble(vals, L, H, r0, layers, per_token, full, has_target is not None, aligned)


def _alignment(complexity: list[torch.Tensor], counts_all: torch.Tensor, has_target: torch.Tensor,
               token_loss: torch.Tensor, out32: int = 0) -> torch.Tensor | None:
    """complexity_loss_corr and heads_loss_corr of every layer (as alignment.loss_alignment),
    (2L,) float64: complexity rows, then head-count rows. One (1 + 2L, N) table over the target
    tokens, ranked once. complexity: each layer's per-token complexity (B*T values each);
    counts_all (L, B*T): every token's head count. `out32`: where the C pass also writes them
    as float32 (then None is returned: the caller has them), else 0."""
    loss = token_loss.detach() if token_loss.requires_grad else token_loss  # (no no-op dispatch)
    has = has_target.reshape(-1)
    cx = [_f32(c) for c in complexity]
    corr = spearman_rows_at(_f32(loss).reshape(-1), [*cx, *counts_all], has, out32)
    if corr is not None:  # one C pass reads the target tokens itself
        return None if out32 else corr
    tidx = has.nonzero().squeeze(1)
    table = torch.cat([_f32(loss).reshape(1, -1), torch.stack([c.reshape(-1) for c in cx]).index_select(1, tidx),
                       counts_all.index_select(1, tidx)])
    return spearman_rows(table)


def _assemble(vals: list[float], L: int, H: int, r0: Routing, layers: list[int], per_token: list[str],
              full: bool, aligned: bool, corr: bool) -> list[dict]:
    """Cut the flat values (laid out as rows() cats them) into `layers` entries, in the
    reference's field order (routing.layer_stats, then the alignment fields)."""
    # the head counts' mean, min, max, std (L each), head_load (L * H), heads_hist (full)
    load = 4 * L
    pos = load + L * H
    hist = pmean = None
    if full:
        hist, pos = pos, pos + L * (H + 1)
    # the per-token series' mean, min, max (S each)
    S = L * (len(per_token) + (r0.probs is not None))
    mean, lo, hi = pos, pos + S, pos + 2 * S
    pos += 3 * S
    pred = None
    if r0.pred_norm is not None:
        pred, pos = pos, pos + L
    Hp = 0 if r0.probs is None else r0.probs.shape[-1]
    if full and Hp:
        pmean, pos = pos, pos + L * Hp
    cpos = pos if corr else None
    # each per-token series' row in the table (None: the field is absent, written as null)
    t_row, c_row = (per_token.index(a) * L if a in per_token else None for a in ("tau", "complexity"))
    e_row = len(per_token) * L if r0.probs is not None else None
    out = []
    for l, li in enumerate(layers):
        t = None if t_row is None else t_row + l
        c = None if c_row is None else c_row + l
        # the keys in schema.layer_row's order (LAYER_FIELDS, then the optional ones given):
        # literal keys need no check, and the copy layer_row makes is ~20 us a layer here
        row: dict[str, Any] = {
            "layer": li, "heads_mean": vals[l], "heads_min": vals[L + l], "heads_max": vals[2 * L + l],
            "heads_std": vals[3 * L + l], "head_load": vals[load + l * H:load + (l + 1) * H],
            "threshold_mean": None if t is None else vals[mean + t],
            "threshold_min": None if t is None else vals[lo + t],
            "threshold_max": None if t is None else vals[hi + t],
            "complexity_mean": None if c is None else vals[mean + c],
            "complexity_min": None if c is None else vals[lo + c],
            "complexity_max": None if c is None else vals[hi + c],
            "entropy": None if e_row is None else -vals[mean + e_row + l],
            "pred_norm": None if pred is None else vals[pred + l],
        }
        if full:
            row["heads_hist"] = vals[hist + l * (H + 1):hist + (l + 1) * (H + 1)]
            row["prob_mean"] = None if pmean is None else vals[pmean + l * Hp:pmean + (l + 1) * Hp]
        if aligned:
            for j, f in enumerate(schema.ALIGNMENT_STATS):  # NaN: undefined on this step
                x = None if cpos is None else vals[cpos + j * L + l]
                row[f] = None if x is None or x != x else x
        out.append(row)
    return out
