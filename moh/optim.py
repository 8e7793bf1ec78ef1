"""AdamW parameter groups, warmup + cosine schedule, gradient norms and global clipping.

Parameter groups for telemetry (schema.GRAD_GROUPS), by name:
  embedding  token/position embeddings (= the tied output head) and the final LayerNorm
  attention  qkv and output projections and the pre-attention LayerNorm
  ffn        MLP and the pre-MLP LayerNorm
  router     router weights (adaptive W_r; moh W_r, W_s, W_h)
  complexity complexity predictor (adaptive)
  threshold  threshold predictor (adaptive)
Optimizer groups: matrices of the main model decay; biases, norms and everything routing
(router + predictors, with `router_lr_mult`) do not.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .config import Config

GRAD_GROUPS = ("embedding", "attention", "ffn", "router", "complexity", "threshold")  # == schema
ROUTING_GROUPS = ("router", "complexity", "threshold")


def grad_group(name: str) -> str:
    """Telemetry group of a parameter, from its qualified name in `model.LM`."""
    if ".attn.router." in name:
        if ".attn.router.complexity." in name:
            return "complexity"
        if ".attn.router.threshold." in name:
            return "threshold"
        return "router"
    if ".attn." in name or ".ln1." in name:
        return "attention"
    if ".mlp." in name or ".ln2." in name:
        return "ffn"
    return "embedding"  # tok_emb, pos_emb, lm_head (tied to tok_emb or not), ln_f


def named_groups(model: nn.Module) -> dict[str, list[torch.Tensor]]:
    """Group name -> parameters (every group key present, possibly empty)."""
    groups: dict[str, list[torch.Tensor]] = {g: [] for g in GRAD_GROUPS}
    for name, p in model.named_parameters():  # tied weights are yielded once
        groups[grad_group(name)].append(p)
    return groups


def make_optimizer(model: nn.Module, cfg: Config, lr: float) -> torch.optim.AdamW:
    decay, no_decay, routing = [], [], []
    for name, p in model.named_parameters():
        if grad_group(name) in ROUTING_GROUPS:
            routing.append(p)
        elif p.dim() >= 2:
            decay.append(p)
        else:  # biases and LayerNorm gains
            no_decay.append(p)
    param_groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "lr_mult": 1.0, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0, "name": "no_decay"},
        {"params": routing, "weight_decay": 0.0, "lr_mult": cfg.router_lr_mult, "name": "routing"},
    ]
    param_groups = [g for g in param_groups if g["params"]]
    opt = torch.optim.AdamW(param_groups, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8,
                            foreach=True)
    set_lr(opt, lr)
    return opt


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr * g["lr_mult"]


def lr_at(step: int, total: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Linear warmup over `warmup` steps, then cosine from `peak` to `min_ratio * peak`.

    `step` counts from 0 within a phase of `total` optimizer steps.
    """
    warmup = min(warmup, max(total - 1, 0))
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    span = max(total - 1 - warmup, 1)
    frac = min((step - warmup) / span, 1.0)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def grad_norms(groups: dict[str, list[torch.Tensor]]) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    """Total L2 grad norm (0-d tensor) and one per group (None for a group with no parameters).

    No host sync: the caller reads the values on logging steps only.
    """
    per: dict[str, torch.Tensor | None] = {}
    squares = []
    for g, params in groups.items():
        grads = [p.grad for p in params if p.grad is not None]
        if not params:
            per[g] = None
            continue
        if not grads:  # parameters exist but received no gradient at all
            per[g] = torch.zeros((), device=params[0].device)
            continue
        sq = torch.stack([torch.linalg.vector_norm(t.float()) ** 2 for t in grads]).sum()
        squares.append(sq)
        per[g] = sq.sqrt()
    total = torch.stack(squares).sum().sqrt() if squares else torch.zeros((), device=_device(groups))
    return total, per


def _device(groups: dict[str, list[torch.Tensor]]) -> torch.device:
    return next((p.device for ps in groups.values() for p in ps), torch.device("cpu"))


def clip_(params: list[torch.Tensor], total: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale grads so their global norm is at most `max_norm` (0 = off); returns the new norm."""
    if max_norm <= 0:
        return total
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)  # tensor op: no sync
    grads = [p.grad for p in params if p.grad is not None]
    torch._foreach_mul_(grads, scale)
    return total * scale
