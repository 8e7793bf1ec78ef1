"""Decoder-only transformer LM whose attention heads are gated per token by a router.

Token + learned position embeddings, pre-norm blocks (LayerNorm -> causal self-attention ->
residual, LayerNorm -> MLP -> residual), final LayerNorm, output head tied to the token
embedding. Shapes: B batch, T time, C d_model, H heads, D = C / H head dim, V vocabulary.

Every head is computed and its output multiplied by the router's gate, as the MoH authors'
released code also does: no compute is saved, the point is to measure what routing learns.
What the gates are is the router's business: the `moh` router's follow the released code's
arithmetic by default (moh_gates = "released") or the paper's equations ("paper"); every
deviation from a source is listed in docs/routing.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import Config
from .data import IGNORE_INDEX
from .difficulty import quantiles_at
from .route_fast import fused_projections
from .routing import Routing, make_router
from .token_loss import token_loss



class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.n_heads, self.d_model = cfg.n_heads, cfg.d_model
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.router = make_router(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        # the column blocks of the fused q, k, v + router matmul, known once (None: not fused)
        proj_params = getattr(self.router, "proj_params", None)
        self.fused_sizes = None if proj_params is None else [
            cfg.d_model, cfg.d_model, cfg.d_model, sum(w.shape[0] for w in proj_params()[0])]

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, Routing]:
        """x (B, T, C) -> (output, routing); `valid` (B, T) real tokens, for the router (LM.forward)."""
        B, T, C = x.shape
        H, D = self.n_heads, C // self.n_heads
        if self.fused_sizes is not None and x.dtype == torch.float32:
            # The router's projections of x ride along in the qkv matmul: one matmul and one
            # input gradient instead of two (the qkv columns are computed exactly as alone).
            ws, bs = self.router.proj_params()
            q, k, v, proj = fused_projections(x, [self.qkv.weight, *ws], [self.qkv.bias, *bs], self.fused_sizes)
            r = self.router(x, proj=proj, valid=valid)  # proj (B, T, K)
        else:  # dense, or a model dtype other than the routers' float32
            q, k, v = self.qkv(x).split(C, dim=2)
            r = self.router(x, valid=valid)
        q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        # Right padding + causal mask: real tokens never attend to the pads after them.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
        y = y.transpose(1, 2)  # (B, T, H, D)
        if r.gates is not None:  # gates (B, T, H, 1) first: the product comes out laid out as
            y = r.gates.unsqueeze(-1) * y  # (B, T, H, D), so no copy is needed below (y first: as
            # (B, H, T, D), and the reshape copied it again)
        y = y.reshape(B, T, C)  # (B, T, C)
        return self.dropout(self.proj(y)), r


class MLP(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, Routing]:
        a, r = self.attn(self.ln1(x), valid)  # the router sees the same normed input as the heads
        x = x + a
        x = x + self.mlp(self.ln2(x))
        return x, r


class LM(nn.Module):
    def __init__(self, cfg: Config, vocab_size: int):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.tok_emb = nn.Embedding(vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):  # residual projections scaled as in GPT-2
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied head counted once

    def features(self, idx: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, list[Routing]]:
        """idx (B, T) -> final normed hidden states (B, T, C) and one Routing per layer;
        `valid` (B, T) bool, the real tokens, lets a router sum the aux objective's token
        sums in its own pass (`Routing.sums`)."""
        B, T = idx.shape
        if T > self.cfg.max_len:
            raise ValueError(f"sequence length {T} exceeds max_len {self.cfg.max_len}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        routings = []
        for block in self.blocks:
            x, r = block(x, valid)
            routings.append(r)
        return self.ln_f(x), routings

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, token_losses: bool = False,
                valid: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None, list[Routing]]:
        """idx (B, T) -> (logits, loss_sum, one Routing per layer).

        Without targets: logits (B, T, V) and loss_sum None. With targets: the loss SUMMED
        over target tokens (targets == -100 ignored); the caller divides by the token count
        (the global count under data parallelism, so ranks agree). The first item is then
        None, or with `token_losses` the detached loss of each target token (N,), in the
        row-major order of `targets != -100` (logged steps: moh/alignment.py): the very
        losses `loss_sum` adds up (moh/token_loss.py), so logging them costs nothing.
        `valid` (B, T) bool, the real tokens: the mask the training step also gives
        losses.aux_objective, so the routers can sum its token sums in their own pass.
        """
        x, routings = self.features(idx, valid)
        if targets is None:
            return self.lm_head(x), None, routings  # (B, T, V)
        # Training: project only the positions that have a target (no pads, no last token):
        # the vocabulary projection is the largest matmul at this size.
        sel = targets != IGNORE_INDEX  # (B, T)
        logits = self.lm_head(x[sel])  # (N, V)
        # the complexity predictor's stop-gradient target (training steps only: evaluation has
        # no aux loss, and ranks step in lockstep), from the same softmax as the loss
        target = self.cfg.complexity_target if self.training and self.cfg.router == "adaptive" else "heads"
        losses, entropy = token_loss(logits.float(), targets[sel], with_entropy=target == "entropy_rank")
        loss_sum = losses.sum()
        if target != "heads":
            u = quantiles_at(entropy if target == "entropy_rank" else losses, sel)
            for r in routings:
                r.difficulty = u
        return (losses.detach() if token_losses else None), loss_sum, routings

    @torch.no_grad()
    def generate(self, prompts: torch.Tensor, max_new_tokens: int, eos_id: int) -> torch.Tensor:
        """Greedy continuation of equal-length prompts (B, T0) -> new ids (B, <= max_new_tokens).

        Stops when every row has produced `eos_id` or the context is full; positions after a
        row's eos are filled with eos. No KV cache: at these lengths recomputing is cheap.
        """
        idx = prompts
        done = torch.zeros(prompts.shape[0], dtype=torch.bool, device=prompts.device)
        for _ in range(max_new_tokens):
            if idx.shape[1] >= self.cfg.max_len:
                break
            x, _ = self.features(idx)
            nxt = self.lm_head(x[:, -1]).argmax(-1)  # (B,): only the last position is needed
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            idx = torch.cat([idx, nxt[:, None]], dim=1)
            done |= nxt == eos_id
            if bool(done.all()):
                break
        return idx[:, prompts.shape[1]:]
