"""Per-layer routing statistics as mergeable sums: the one reduction behind every logged
`layers` entry that is built from more than one batch of tokens.

A `Sums` holds, for one layer, sums (token count, sum and sum of squares of per-token unit
counts, per-unit selection counts, threshold / complexity / entropy sums, ...) and extremes
(-min, max). Sums add and extremes take the maximum, so the same reduction serves
- several ranks (`moh.monitor.Recorder` under torch.distributed: one SUM and one MAX
  all-reduce for all layers together), and
- several forward passes before one optimizer step (`moh.monitor.Recorder`: gradient
  accumulation), where nothing per token survives the forward pass that produced it.
`finish` turns merged sums into the fields of `routing.layer_stats` (float64 throughout:
hard counts are small integers, so their sums are exact and heads_std has no cancellation
worth speaking of at these sizes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .routing import Routing


@dataclass
class Sums:
    sums: torch.Tensor        # float64, layout described by `layout`
    extremes: torch.Tensor    # float64 [-min, max] pairs, for a MAX reduction
    layout: dict[str, Any]    # which optional stats are present and their widths
    pred_norm: torch.Tensor | None = None

    def merge(self, other: "Sums") -> "Sums":
        """These sums plus `other`'s (the same layer seen again); layouts must agree."""
        if other.layout != self.layout:
            raise ValueError(f"routing statistics changed shape between forward passes: "
                             f"{self.layout} then {other.layout}")
        return Sums(self.sums + other.sums, torch.maximum(self.extremes, other.extremes),
                    self.layout, other.pred_norm if other.pred_norm is not None else self.pred_norm)


def _ext(x: torch.Tensor) -> torch.Tensor:
    """[-min, max] of x (+-inf bounds for an empty x), for one MAX reduction."""
    if x.numel() == 0:
        return x.new_tensor([-float("inf"), -float("inf")])
    return torch.stack([-x.min(), x.max()])


def partial(r: Routing, valid: torch.Tensor, full: bool = False) -> Sums:
    """The sums of one layer's routing over the real tokens of one batch (valid: bool, the
    routing's leading shape). Detached: no autograd graph is kept alive by the result."""
    v = valid.reshape(-1)
    hard = r.hard.detach().reshape(-1, r.hard.shape[-1])[v].to(torch.float64)  # (N, H)
    counts = hard.sum(-1)
    layout: dict[str, Any] = {"H": hard.shape[-1]}
    part = [counts.new_tensor([counts.numel()]), counts.sum().view(1), (counts * counts).sum().view(1),
            hard.sum(0)]
    ext = [_ext(counts)]
    for name, t in (("threshold", r.tau), ("complexity", r.complexity)):
        layout[name] = t is not None
        if t is not None:
            t = t.detach().reshape(-1)[v].to(torch.float64)
            part.append(t.sum().view(1))
            ext.append(_ext(t))
    layout["entropy"] = r.probs is not None
    p = None
    if r.probs is not None:
        p = r.probs.detach().reshape(-1, r.probs.shape[-1])[v].to(torch.float64)
        part.append((-(p * p.clamp_min(1e-12).log()).sum(-1)).sum().view(1))
    layout["full"] = full
    if full:
        H = layout["H"]
        part.append(torch.bincount(counts.long(), minlength=H + 1)[: H + 1].to(torch.float64))
        layout["Hp"] = 0 if p is None else p.shape[-1]
        if p is not None:
            part.append(p.sum(0))
    pred = None if r.pred_norm is None else r.pred_norm.detach()
    return Sums(torch.cat(part), torch.cat(ext), layout, pred)


def reduce(layers: list[Sums], sum_: Callable[[torch.Tensor], torch.Tensor],
           max_: Callable[[torch.Tensor], torch.Tensor]) -> list[Sums]:
    """Every layer's sums reduced by `sum_` / `max_` (e.g. all-reduces over ranks) with one call
    of each for all layers together."""
    if not layers:
        return []
    flat_s = sum_(torch.cat([s.sums for s in layers]))
    flat_e = max_(torch.cat([s.extremes for s in layers]))
    out, ps, pe = [], 0, 0
    for s in layers:
        ns, ne = s.sums.numel(), s.extremes.numel()
        out.append(Sums(flat_s[ps:ps + ns], flat_e[pe:pe + ne], s.layout, s.pred_norm))
        ps, pe = ps + ns, pe + ne
    return out


def finish(s: Sums) -> dict[str, torch.Tensor | None]:
    """The fields of `routing.layer_stats` from one layer's (merged) sums; None where a stat
    does not apply."""
    lay, fs, fe = s.layout, s.sums, s.extremes
    H = lay["H"]
    n, c_sum, c_sq = fs[0], fs[1], fs[2]
    nz = n.clamp_min(1.0)
    mean = c_sum / nz
    row: dict[str, torch.Tensor | None] = {
        "heads_mean": mean, "heads_min": -fe[0], "heads_max": fe[1],
        "heads_std": (c_sq / nz - mean * mean).clamp_min(0.0).sqrt(), "head_load": fs[3:3 + H] / nz,
    }
    ps, pe = 3 + H, 2
    for name in ("threshold", "complexity"):
        if lay[name]:
            row |= {f"{name}_mean": fs[ps] / nz, f"{name}_min": -fe[pe], f"{name}_max": fe[pe + 1]}
            ps, pe = ps + 1, pe + 2
        else:
            row |= {f"{name}_mean": None, f"{name}_min": None, f"{name}_max": None}
    if lay["entropy"]:
        row["entropy"] = fs[ps] / nz
        ps += 1
    else:
        row["entropy"] = None
    if lay["full"]:
        row["heads_hist"] = fs[ps:ps + H + 1] / nz
        ps += H + 1
        Hp = lay["Hp"]
        row["prob_mean"] = fs[ps:ps + Hp] / nz if Hp else None
    row["pred_norm"] = s.pred_norm
    return row
