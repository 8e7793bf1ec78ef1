"""Auxiliary routing losses, each averaged over layers and real (non-padding) tokens.

| term          | formula (per layer)                                   | applies to     |
|---------------|-------------------------------------------------------|----------------|
| load_balance  | (H_b / mean_k) * sum_i f_i P_i   (= 1 when balanced)   | moh "paper", adaptive |
|               | H_b * sum_i f_i P_i              (= k when balanced)   | moh "released" |
| z             | mean(logsumexp(logits)^2)                             | moh, adaptive  |
| complexity    | mean((stopgrad(target) - kappa)^2) / H^2              | adaptive       |
| budget        | ((mean count - target_heads) / H)^2                   | adaptive       |
| entropy       | mean(-sum_i pi_i log pi_i)       (nats, <= log H)      | adaptive       |

f_i: fraction of tokens whose hard mask selects head i; P_i: mean router probability; mean_k:
mean hard heads per token over the balanced heads (moh: the routed ones). The released MoH code
omits the 1/mean_k, so under moh_gates = "released" the same lb_weight pushes k times harder than
the Switch form, as in the authors' runs. The complexity term teaches the predictor a target
(config complexity_target): by default the number of heads the hard mask actually used; under
"loss_rank" / "entropy_rank" the budget kappa* = k_min + 2 (target_heads - k_min - 1/2) u from the
rank quantile u of the token's difficulty in the batch (moh/difficulty.py), averaged over the
tokens that have a next-token target. The budget term's count is the straight-through count: its
value is the hard count, its gradient the surrogate's, so it steers the count that is measured.
The entropy term (Huang et al.'s "dynamic loss"), minimised, sharpens the router so that top-p
keeps fewer heads. A term that does not apply is None, never 0.
"""

from __future__ import annotations

from typing import Callable

import torch

from . import schema
from .config import Config
from .difficulty import budget_target
from .routing import Routing

TERMS = schema.AUX_TERMS
WEIGHT_KEYS = schema.AUX_WEIGHT_KEYS  # term -> the config key of its weight


def _masked_sum(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Sum of x (B, T[, K]) over tokens with weight w (B, T) in {0, 1}: (K,) or 0-d."""
    if x.dim() == 3:
        return (x * w.unsqueeze(-1)).sum((0, 1))
    return (x * w).sum()


def aux_losses(routings: list[Routing], valid: torch.Tensor, cfg: Config,
               reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor | None]:
    """Raw (unweighted) aux terms, each a 0-d tensor averaged over layers, or None.

    Every term is a function of token SUMS (per-head f_i and P_i sums, z, complexity and
    head-count sums, the real-token count). `reduce` maps the flat vector of those sums to the
    job's sums before the terms are formed: under data parallelism an autograd-aware all-reduce
    (`distributed.sum_autograd`), so the batch-level statistics (f_i, P_i, mean count) are the
    global batch's and a 2-rank run computes the 1-rank run's terms. None = this process only.
    """
    w = valid.float()  # (B, T)
    parts: list[torch.Tensor] = [w.sum().view(1)]
    layout: list[tuple[int, bool]] = []  # per routed layer: (balanced heads Hb, adaptive?)
    for r in routings:
        if r.probs is None:  # dense: nothing is routed
            continue
        hard_b = r.hard[..., r.balance_heads].float()  # (B, T, Hb)
        parts += [_masked_sum(hard_b, w), _masked_sum(r.probs, w),  # (Hb,) f and P numerators
                  _masked_sum(torch.logsumexp(r.logits, -1) ** 2, w).view(1)]
        adaptive = r.kappa is not None
        if adaptive:
            target, w_c = _complexity_target(r, w, cfg)
            # off (weight 0): logged only, no path into the backward pass
            p = r.probs if cfg.entropy_weight else r.probs.detach()
            ent = -(p * p.clamp_min(1e-12).log()).sum(-1)  # (B, T) nats
            parts += [_masked_sum((target - r.kappa) ** 2, w_c).view(1),
                      _masked_sum(r.count.float(), w).view(1), _masked_sum(ent, w).view(1),
                      w_c.sum().view(1)]
        layout.append((hard_b.shape[-1], adaptive))
    flat = torch.cat(parts)
    if reduce is not None:
        flat = reduce(flat)
    n = flat[0].clamp_min(1.0)
    per_term: dict[str, list[torch.Tensor]] = {t: [] for t in TERMS}
    pos = 1
    for (Hb, adaptive), r in zip(layout, (r for r in routings if r.probs is not None)):
        f = flat[pos : pos + Hb] / n  # (Hb,) fraction of tokens per head
        P = flat[pos + Hb : pos + 2 * Hb] / n  # (Hb,) mean probability per head
        pos += 2 * Hb
        mean_k = f.sum().clamp_min(1e-6)  # heads per token among the balanced ones
        balance = Hb * (f * P).sum()
        per_term["load_balance"].append(balance / mean_k if r.balance_per_k else balance)
        per_term["z"].append(flat[pos] / n)
        pos += 1
        if adaptive:
            H = r.hard.shape[-1]
            per_term["complexity"].append(flat[pos] / flat[pos + 3].clamp_min(1.0) / H**2)
            mean_count = flat[pos + 1] / n
            per_term["budget"].append(((mean_count - cfg.target_heads) / H) ** 2)
            per_term["entropy"].append(flat[pos + 2] / n)
            pos += 4
    return {t: (torch.stack(v).mean() if v else None) for t, v in per_term.items()}


def _complexity_target(r: Routing, w: torch.Tensor, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """What kappa is trained toward (B, T), with no gradient, and the tokens that count (B, T).

    "heads": the hard count the mask used, over real tokens. A difficulty target: the budget
    kappa* from the rank quantile of the token's difficulty (moh/difficulty.py), over the
    tokens that have one (real tokens with a next-token target)."""
    if cfg.complexity_target == "heads" or r.difficulty is None:
        return r.hard.sum(-1).to(r.kappa.dtype), w
    d = r.difficulty.detach()  # stop-gradient: the target is not something to move
    has = torch.isfinite(d)
    u = torch.where(has, d, 0.0)
    target = budget_target(u, cfg.k_min, cfg.target_heads, r.hard.shape[-1]).to(r.kappa.dtype)
    return target, w * has.float()


def weighted_total(aux: dict[str, torch.Tensor | None], cfg: Config) -> torch.Tensor | None:
    """sum_t weight_t * aux_t over the terms that apply (None when none do)."""
    parts = [getattr(cfg, WEIGHT_KEYS[t]) * v for t, v in aux.items() if v is not None]
    return torch.stack(parts).sum() if parts else None
