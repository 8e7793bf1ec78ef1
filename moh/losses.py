"""Auxiliary routing losses, each averaged over layers and real (non-padding) tokens.

| term          | formula (per layer)                                   | applies to     |
|---------------|-------------------------------------------------------|----------------|
| load_balance  | (H_b / mean_k) * sum_i f_i P_i   (= 1 when balanced)   | moh, adaptive  |
| z             | mean(logsumexp(logits)^2)                             | moh, adaptive  |
| complexity    | mean((stopgrad(hard count) - kappa)^2) / H^2          | adaptive       |
| budget        | ((mean count - target_heads) / H)^2                   | adaptive       |

f_i: fraction of tokens whose hard mask selects head i; P_i: mean router probability; mean_k:
mean hard heads per token over the balanced heads (moh: the routed ones). The complexity term
teaches the predictor the number of heads the hard mask actually used. The budget term's count
is the straight-through count: its value is the hard count, its gradient the surrogate's, so
it steers the count that is measured. A term that does not apply is None, never 0.
"""

from __future__ import annotations

import torch

from .config import Config
from .routing import Routing

TERMS = ("load_balance", "z", "complexity", "budget")  # == schema.AUX_TERMS
WEIGHT_KEYS = {"load_balance": "lb_weight", "z": "z_weight",
               "complexity": "complexity_weight", "budget": "budget_weight"}


def _masked_mean(x: torch.Tensor, w: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Mean of x (B, T[, K]) over tokens with weight w (B, T) in {0, 1}; n = w.sum()."""
    if x.dim() == 3:
        return (x * w.unsqueeze(-1)).sum((0, 1)) / n
    return (x * w).sum() / n


def aux_losses(routings: list[Routing], valid: torch.Tensor, cfg: Config) -> dict[str, torch.Tensor | None]:
    """Raw (unweighted) aux terms, each a 0-d tensor averaged over layers, or None."""
    w = valid.float()  # (B, T)
    n = w.sum().clamp_min(1.0)
    per_term: dict[str, list[torch.Tensor]] = {t: [] for t in TERMS}
    for r in routings:
        if r.probs is None:  # dense: nothing is routed
            continue
        hard_b = r.hard[..., r.balance_heads].float()  # (B, T, Hb)
        Hb = hard_b.shape[-1]
        f = _masked_mean(hard_b, w, n)  # (Hb,) fraction of tokens per head
        P = _masked_mean(r.probs, w, n)  # (Hb,) mean probability per head
        mean_k = f.sum().clamp_min(1e-6)  # heads per token among the balanced ones
        per_term["load_balance"].append(Hb / mean_k * (f * P).sum())
        per_term["z"].append(_masked_mean(torch.logsumexp(r.logits, -1) ** 2, w, n))
        if r.kappa is not None:
            H = r.hard.shape[-1]
            used = r.hard.sum(-1).to(r.kappa.dtype)  # (B, T) hard count, no gradient
            per_term["complexity"].append(_masked_mean((used - r.kappa) ** 2, w, n) / H**2)
            mean_count = _masked_mean(r.count.float(), w, n)
            per_term["budget"].append(((mean_count - cfg.target_heads) / H) ** 2)
    return {t: (torch.stack(v).mean() if v else None) for t, v in per_term.items()}


def weighted_total(aux: dict[str, torch.Tensor | None], cfg: Config) -> torch.Tensor | None:
    """sum_t weight_t * aux_t over the terms that apply (None when none do)."""
    parts = [getattr(cfg, WEIGHT_KEYS[t]) * v for t, v in aux.items() if v is not None]
    return torch.stack(parts).sum() if parts else None
