"""A logged step's `layers` entries for all layers at once, on one process (issue 14).

`routing.layer_stats` per layer + `alignment.loss_alignment` + `rows.layer_rows` is the
reference; on the engine's shapes (N ~ 224 tokens x 8 heads) its cost is the dispatch of a
few hundred small operators, not arithmetic. When every layer of the step has the same shapes,
dtypes, fields and `valid` tensor (the engine's case, and a user model with identical blocks),
this path stacks the layers into (L, N, H) tensors and makes each reduction once, indexes the
valid and target tokens once each, ranks the loss and every layer's series in one call, and
reads every value with one `tolist()`. On the CPU one call of moh/native.c `step_layers` does
all of it into one buffer, in three passes: `head_count_stats` (every layer's head counts and
their statistics), `series_stats` (the float series: thresholds, complexities, the entropy
term, pred_norm, prob_mean) and `spearman_rows_at` (the loss alignment, reading the target
tokens itself).
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
from ..alignment import EXACT_N, spearman_rows, spearman_rows_at
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


def _count_stats(L: int, H: int, full: bool) -> int:
    """How many head-count statistics a record has: mean, min, max, std (L each), head_load
    (L * H), heads_hist (L * (H + 1), full)."""
    return 4 * L + L * H + (L * (H + 1) if full else 0)


def _values_in_c(rs: list[Routing], v: torch.Tensor, full: bool, per_token: list[str],
                 has_target: torch.Tensor | None, token_loss: torch.Tensor | None, aligned: bool
                 ) -> tuple[list[float], int] | None:
    """Every value of the layers' entries after the head counts, laid out as _assemble reads
    them, and the number of valid tokens (0: nothing but that), from one call of native.c
    step_layers; None where the kernels cannot take the fields (the caller's torch ops)."""
    BT, r0, L = v.numel(), rs[0], len(rs)
    H = r0.hard.shape[-1]
    Hp = 0 if r0.probs is None else r0.probs.shape[-1]
    if BT >= _STD_GRAIN or BT * H >= 2 ** 24 or max(H, Hp) > native.MAX_HEADS or not v.is_cpu:
        return None
    # (dense's selection is an expanded view of one row: one copy)
    hards = [r.hard if r.hard.is_contiguous() else r.hard.contiguous() for r in rs]
    series = [getattr(r, a) for a in per_token for r in rs]
    probs = [r.probs for r in rs] if Hp else []
    preds = [r.pred_norm for r in rs] if r0.pred_norm is not None else []
    if r0.hard.dtype is not torch.bool:  # (stackable: every layer's dtypes alike, not devices)
        return None
    for t in hards:
        if not t.is_cpu:
            return None
    for t in (*series, *probs, *preds):
        if t.dtype is not _F32 or not t.is_cpu or not t.is_contiguous():
            return None
    # one value a token (Hp a token for probs): the C pass reads that many, nothing checked
    # them before (the torch ops raise on another shape, as the reference does)
    for t in series:
        if t.numel() != BT:
            return None
    for t in probs:
        if t.numel() != BT * Hp:
            return None
    kernels = native.lib()
    if kernels is None:
        return None
    v = v if v.is_contiguous() else v.contiguous()
    # the loss alignment in the same call where the kernel ranks these targets, else after it
    n_t = token_loss.numel() if aligned else 0
    loss = None
    if aligned:
        loss = _f32(token_loss)
        loss = loss if loss.dim() == 1 else loss.reshape(-1)
    in_call = aligned and 2 <= n_t < EXACT_N and has_target.is_cpu and loss.is_cpu and loss.is_contiguous()
    cx = [r.complexity for r in rs] if aligned else []
    S, R = len(series), len(series) + (L if Hp else 0)
    end = L * BT + _count_stats(L, H, full) + 3 * R + len(preds) + (L * Hp if full else 0)
    # plain arrays: read out as floats below, nothing holds them after this call
    size = end + (2 * L if aligned else 0)
    buf = array.array("f", bytes(4 * size))
    m = (1 + 2 * L) * n_t
    scratch = array.array("d", bytes(8 * (m + 2 * L + 2 * n_t + (m + 1) // 2))) if in_call else None
    at = array.array("q", [t.data_ptr() for t in (*hards, *series, *probs, *preds, *cx)])
    found = array.array("q", [0, 0])
    a = at.buffer_info()[0]
    addr = [a, a + 8 * L, a + 8 * (L + S), a + 8 * (L + S + len(probs)), a + 8 * (L + S + len(probs) + len(preds))]
    has = None if not in_call else has_target if has_target.is_contiguous() else has_target.contiguous()
    kernels.step_layers(L, BT, H, addr[0], v.data_ptr(), int(full), S, addr[1] if S else None, Hp,
                        addr[2] if Hp else None, addr[3] if preds else None, None if has is None else has.data_ptr(),
                        n_t, loss.data_ptr() if in_call else None, addr[4] if in_call else None,
                        scratch.buffer_info()[0] if in_call else None, buf.buffer_info()[0], found.buffer_info()[0])
    if found[0] == 0:
        return [], 0
    if in_call and found[1] != n_t:
        raise ValueError(f"{n_t} token values for {found[1]} marked tokens")
    if aligned and not in_call:  # (fewer than 2 targets, or too many to rank exactly)
        counts_all = torch.frombuffer(buf, dtype=_F32, count=L * BT).view(L, BT)
        with torch.no_grad():
            buf[end:] = array.array("f", _alignment(cx, counts_all, has_target, token_loss).tolist())
    return buf[L * BT:].tolist(), found[0]


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
    L, r0 = len(rs), rs[0]
    H = r0.hard.shape[-1]
    # every per-token series whose mean / min / max is logged, one row each: (the head counts, L,
    # on the torch path) threshold (L) and complexity (L) where present, then each token's sum of
    # p log p (L; the entropy is minus its mean, negated in _assemble: mean(-x) is -mean(x) to
    # the bit)
    per_token = [a for a in ("tau", "complexity") if getattr(r0, a) is not None]
    aligned = has_target is not None and token_loss is not None and "complexity" in per_token
    in_c = _values_in_c(rs, v, full, per_token, has_target, token_loss, aligned)
    if in_c is not None:
        vals, n = in_c
        if n == 0:  # the reference's min() of no tokens raises: let it say so
            return None
        return _assemble(vals, L, H, r0, layers, per_token, full, has_target is not None, aligned)
    with torch.no_grad():  # (the routing is held as given: no graph from its statistics)
        return _rows_torch(rs, v, layers, full, per_token, has_target, token_loss, aligned)


def _rows_torch(rs: list[Routing], v: torch.Tensor, layers: list[int], full: bool, per_token: list[str],
                has_target: torch.Tensor | None, token_loss: torch.Tensor | None, aligned: bool
                ) -> list[dict] | None:
    """rows() in torch ops, where the kernels cannot take the fields."""
    BT, L, r0 = v.numel(), len(rs), rs[0]
    H = r0.hard.shape[-1]
    Hp = 0 if r0.probs is None else r0.probs.shape[-1]
    # the head counts, every token's (L, B*T) and over the valid tokens
    idx = v.nonzero().squeeze(1)  # the valid tokens, once for every field of every layer
    N = idx.numel()
    if N == 0:
        return None
    hard_all = torch.stack([r.hard for r in rs]).reshape(L, -1, H)  # (L, B*T, H) bool
    hard = _take(hard_all, idx, BT)  # (L, N, H) bool
    counts_all = hard_all.sum(-1, dtype=_F32)  # small integers, exact in float32
    counts = _take(counts_all, idx, BT)  # (L, N)
    series = [counts]
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
    table = torch.cat(series) if len(series) > 1 else series[0]
    mean = table.double().mean(-1)
    lo, hi = table.aminmax(dim=-1)
    # std stays per layer: a 1-d std() (all-reduce kernel) and a row-wise std(-1) are not
    # guaranteed to round alike
    std = torch.stack([c.std(unbiased=False) for c in counts.unbind()])  # (one op for the rows)
    # head_load: mean() is sum() then a division by N; the sums of 0/1 are exact either way
    flat = [mean[:L], lo[:L], hi[:L], std, hard.sum(1, dtype=_F32) / N]
    if full:
        # one bincount for every layer: layer l's counts (0..H) offset into bins l * (H + 1)
        off = torch.arange(L, device=counts.device).unsqueeze(1) * (H + 1)
        bins = torch.bincount((counts.long() + off).reshape(-1), minlength=L * (H + 1))
        flat.append(bins.float() / N)
    if per_token or p is not None:  # the float series' rows
        flat += [mean[L:], lo[L:], hi[L:]]
    if r0.pred_norm is not None:
        flat.append(torch.stack([r.pred_norm for r in rs]))  # (L,) or (L, 1): one value each
    if full and p is not None:
        flat.append(p.mean(1))
    if aligned:
        flat.append(_alignment([r.complexity for r in rs], counts_all, has_target, token_loss))
    # one host sync for every value of the step
    vals = torch.cat([_f32(t if t.dim() == 1 else t.reshape(-1)) for t in flat]).tolist()
    return _assemble(vals, L, H, r0, layers, per_token, full, has_target is not None, aligned)


def _alignment(complexity: list[torch.Tensor], counts_all: torch.Tensor, has_target: torch.Tensor,
               token_loss: torch.Tensor) -> torch.Tensor:
    """complexity_loss_corr and heads_loss_corr of every layer (as alignment.loss_alignment),
    (2L,) float64: complexity rows, then head-count rows. One (1 + 2L, N) table over the target
    tokens, ranked once. complexity: each layer's per-token complexity (B*T values each);
    counts_all (L, B*T): every token's head count."""
    loss = token_loss.detach() if token_loss.requires_grad else token_loss  # (no no-op dispatch)
    has = has_target.reshape(-1)
    cx = [_f32(c) for c in complexity]
    corr = spearman_rows_at(_f32(loss).reshape(-1), [*cx, *counts_all], has)
    if corr is not None:  # one C pass reads the target tokens itself
        return corr
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
