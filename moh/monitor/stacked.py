"""A logged step's `layers` entries for all layers at once, on one process (issue 14).

`routing.layer_stats` per layer + `alignment.loss_alignment` + `rows.layer_rows` is the
reference; on the engine's shapes (N ~ 224 tokens x 8 heads) its cost is the dispatch of a
few hundred small operators, not arithmetic. When every layer of the step has the same shapes,
dtypes, fields and `valid` tensor (the engine's case, and a user model with identical blocks),
this path stacks the layers into (L, N, H) tensors and makes each reduction once, indexes the
valid and target tokens once each, ranks the loss and every layer's series in one call, and
reads every value with one `tolist()`. Otherwise `rows()` returns None and the caller takes the
reference path.

The written values are bit-identical to the reference (tests/moh/test_monitor_stacked.py
compares them field by field): each reduction runs over the same tokens in the same order,
only batched over a leading layer dimension. Reductions whose bits could depend on that
(heads_std's Welford / two-pass choice) stay per layer.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import schema
from ..alignment import spearman_rows
from ..routing import Routing
from .rows import LIST_STATS

_F32 = torch.float32


def _same(rs: list[Routing], attr: str) -> bool:
    """All layers have `attr`, with one shape and dtype, or none has it."""
    ts = [getattr(r, attr) for r in rs]
    if all(t is None for t in ts):
        return True
    if any(t is None for t in ts):
        return False
    t0 = ts[0]
    return all(t.shape == t0.shape and t.dtype == t0.dtype and t.device == t0.device for t in ts)


def stackable(parts: list[tuple[Routing, torch.Tensor]]) -> bool:
    """Every layer seen once, with one `valid` tensor and matching routing fields."""
    if not parts:
        return False
    valid = parts[0][1]
    if any(v is not valid for _, v in parts):
        return False
    rs = [r for r, _ in parts]
    if not all(_same(rs, a) for a in ("hard", "probs", "tau", "complexity", "pred_norm")):
        return False
    r0 = rs[0]
    if valid.dtype != torch.bool or valid.numel() * r0.hard.shape[-1] != r0.hard.numel():
        return False  # the reference's boolean indexing decides what happens
    if r0.tau is not None and r0.complexity is not None and r0.tau.dtype != r0.complexity.dtype:
        return False  # stacked together below: a promotion would change the narrower one's bits
    return r0.pred_norm is None or r0.pred_norm.numel() == 1


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == _F32 else t.float()


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
    idx = v.nonzero().squeeze(1)  # the valid tokens, once for every field of every layer
    N = idx.numel()
    if N == 0:  # the reference's min() of no tokens raises: let it say so
        return None
    L, r0 = len(rs), rs[0]
    H = r0.hard.shape[-1]
    hard_all = torch.stack([r.hard for r in rs]).reshape(L, -1, H)  # (L, B*T, H) bool
    hard = hard_all.index_select(1, idx).float()  # (L, N, H)
    counts = hard.sum(-1)  # (L, N) head counts: small integers, exact in float32
    lo, hi = counts.aminmax(dim=-1, keepdim=True)
    # std stays per layer: a 1-d std() (all-reduce kernel) and a row-wise std(-1) are not
    # guaranteed to round alike
    std = torch.stack([c.std(unbiased=False) for c in counts]).view(L, 1)
    cols: list[tuple[str, torch.Tensor | None]] = [
        ("heads_mean", counts.mean(-1, keepdim=True)), ("heads_min", lo), ("heads_max", hi),
        ("heads_std", std), ("head_load", hard.mean(1)),
    ]
    per_token = [name for name, a in (("threshold", "tau"), ("complexity", "complexity"))
                 if getattr(r0, a) is not None]
    tc_all = None
    if per_token:  # threshold and complexity of every layer in one (k * L, B*T) table
        tc_all = torch.stack([getattr(r, a).reshape(-1) for a in ("tau", "complexity")
                              if getattr(r0, a) is not None for r in rs])
        tc = tc_all.index_select(1, idx)
        tc_mean = tc.mean(-1, keepdim=True)
        tc_lo, tc_hi = tc.aminmax(dim=-1, keepdim=True)
    for name in ("threshold", "complexity"):
        if name in per_token:
            k = per_token.index(name) * L
            cols += [(f"{name}_mean", tc_mean[k:k + L]), (f"{name}_min", tc_lo[k:k + L]),
                     (f"{name}_max", tc_hi[k:k + L])]
        else:
            cols += [(f"{name}_mean", None), (f"{name}_min", None), (f"{name}_max", None)]
    p = None
    if r0.probs is None:
        cols.append(("entropy", None))
    else:
        Hp = r0.probs.shape[-1]
        p = torch.stack([r.probs for r in rs]).reshape(L, -1, Hp).index_select(1, idx)  # (L, N, Hp)
        cols.append(("entropy", -(p * p.clamp_min(1e-12).log()).sum(-1).mean(-1, keepdim=True)))
    cols.append(("pred_norm", None if r0.pred_norm is None
                 else torch.stack([r.pred_norm.reshape(()) for r in rs]).view(L, 1)))
    if full:
        # one bincount for every layer: layer l's counts (0..H) offset into bins l * (H + 1)
        off = torch.arange(L, device=counts.device).unsqueeze(1) * (H + 1)
        bins = torch.bincount((counts.long() + off).reshape(-1), minlength=L * (H + 1))
        cols.append(("heads_hist", bins.view(L, H + 1).float() / N))
        cols.append(("prob_mean", None if p is None else p.mean(1)))
    if has_target is not None:
        cols += _alignment(hard_all, tc_all, per_token, L, has_target, token_loss)
    return _assemble(cols, layers)


def _alignment(hard_all: torch.Tensor, tc_all: torch.Tensor | None, per_token: list[str], L: int,
               has_target: torch.Tensor, token_loss: torch.Tensor | None
               ) -> list[tuple[str, torch.Tensor | None]]:
    """complexity_loss_corr and heads_loss_corr of every layer (as alignment.loss_alignment):
    one (1 + 2L, N) table over the target tokens, ranked once."""
    if token_loss is None or "complexity" not in per_token:
        return [(f, None) for f in schema.ALIGNMENT_STATS]
    tidx = has_target.reshape(-1).nonzero().squeeze(1)
    k = per_token.index("complexity") * L
    cx = tc_all[k:k + L].index_select(1, tidx)
    hc = hard_all.index_select(1, tidx).sum(-1)  # int64 head counts, exact as float
    table = torch.cat([_f32(token_loss.detach()).reshape(1, -1), _f32(cx), hc.float()])
    corr = spearman_rows(table)  # (2L,) float64: complexity rows, then head-count rows
    return [("complexity_loss_corr", corr[:L].view(L, 1)), ("heads_loss_corr", corr[L:].view(L, 1))]


def _assemble(cols: list[tuple[str, torch.Tensor | None]], layers: list[int]) -> list[dict]:
    """One (L, W) float32 table of every present column, read with one host sync, cut into
    rows in the reference's field order (schema.layer_row)."""
    present = [_f32(t) for _, t in cols if t is not None]
    values = torch.cat(present, dim=1).tolist()
    out = []
    for li, vals in zip(layers, values):
        row: dict[str, Any] = {"layer": li}
        pos = 0
        for name, t in cols:
            if t is None:
                row[name] = None
                continue
            w = t.shape[1]
            if name in LIST_STATS:
                row[name] = vals[pos:pos + w]
            else:
                x = vals[pos]
                row[name] = None if name in schema.ALIGNMENT_STATS and x != x else x  # NaN: undefined
            pos += w
        out.append(schema.layer_row(**row))
    return out
