"""A small mixture-of-experts language model in plain PyTorch, watched by `moh.monitor`.

The model below knows nothing of moh: each MoE layer routes every token to its top-2 of 4
expert MLPs and keeps its last routing in `self.last`. The only moh code is the Recorder
(`rec.watch`, `rec.step`) and, at the end, `moh report` on the log it wrote.

    python examples/own_moe.py OUT_DIR [--steps 150] [--seed 0] [--detach-router] [--force-expert 0]

--detach-router   cut the router logits out of the graph: the router never learns
                  (`moh report` says router_grad_zero)
--force-expert E  send every token to expert E alone (`moh report` flags the dead experts)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from moh.data import load_corpus
from moh.monitor import Recorder


class MoE(nn.Module):
    def __init__(self, d, n_experts=4, k=2, detach_router=False, force_expert=None):
        super().__init__()
        self.k, self.detach_router, self.force_expert = k, detach_router, force_expert
        self.gate = nn.Linear(d, n_experts, bias=False)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d)) for _ in range(n_experts))

    def forward(self, x):
        B, T, d = x.shape
        x = x.reshape(-1, d)
        logits = self.gate(x)
        if self.detach_router:
            logits = logits.detach()
        probs = logits.softmax(-1)
        if self.force_expert is None:
            w, idx = probs.topk(self.k, dim=-1)
            w = w / w.sum(-1, keepdim=True)
        else:
            idx = torch.full_like(probs[:, :1], self.force_expert, dtype=torch.long)
            w = probs.gather(-1, idx)
        selected = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, idx, True)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows, slot = (idx == e).nonzero(as_tuple=True)
            if len(rows):
                out.index_add_(0, rows, w[rows, slot, None] * expert(x[rows]))
        # Switch-style load balance: n_experts * sum_e (share of tokens) * (mean probability)
        self.aux = probs.shape[-1] * (selected.float().mean(0) / self.k * probs.mean(0)).sum()
        self.last = {"selected": selected.view(B, T, -1), "probs": probs.view(B, T, -1)}
        return out.view(B, T, d)


class Block(nn.Module):
    def __init__(self, d, n_head, **moe):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, n_head, batch_first=True)
        self.moe = MoE(d, **moe)

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.moe(self.ln2(x))


class LM(nn.Module):
    def __init__(self, vocab, d=64, n_layer=2, n_head=4, ctx=64, **moe):
        super().__init__()
        self.tok_emb, self.pos_emb = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, n_head, **moe) for _ in range(n_layer))
        self.ln_f, self.lm_head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        T = idx.shape[1]
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(T))
        for b in self.blocks:
            x = b(x, mask)
        return self.lm_head(self.ln_f(x))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--detach-router", action="store_true")
    ap.add_argument("--force-expert", type=int, default=None)
    ap.add_argument("--no-report", action="store_true", help="only train and write the log")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    # A model this small spends its time in thread hand-offs when it uses several threads on a
    # busy machine (5x slower per step on the shared 2-core test machine); one thread is fastest.
    torch.set_num_threads(1)

    text = "\n".join(load_corpus(None).pretrain)  # the corpus embedded in moh (moh/corpus)
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text])
    ctx, batch, lr, lb_weight = 32, 16, 3e-3, 0.01
    model = LM(len(chars), ctx=ctx, detach_router=args.detach_router, force_expert=args.force_expert)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)

    config = {"lr": lr, "batch": batch, "ctx": ctx, "lb_weight": lb_weight, "steps": args.steps,
              "detach_router": args.detach_router, "force_expert": args.force_expert}
    with Recorder(args.out_dir, model=model, unit="expert", top_k=2, config=config, overwrite=True) as rec:
        for i, block in enumerate(model.blocks):
            rec.watch(block.moe, layer=i, extract=lambda module, inputs, output: module.last)
        for step in range(1, args.steps + 1):
            starts = torch.randint(0, len(data) - ctx - 1, (batch,))
            x = torch.stack([data[s:s + ctx] for s in starts])
            y = torch.stack([data[s + 1:s + ctx + 1] for s in starts])
            lm = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            aux = sum(b.moe.aux for b in model.blocks) / len(model.blocks)
            loss = lm + lb_weight * aux
            opt.zero_grad()
            loss.backward()
            rec.step(step, loss=loss.item(), lm_loss=lm.item(), lr=lr, aux={"load_balance": aux.item()})
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    log = os.path.join(args.out_dir, "run.jsonl")
    print(f"wrote {log}")
    if args.no_report:
        return 0
    moh = shutil.which("moh", path=os.path.dirname(sys.executable)) or shutil.which("moh")
    return subprocess.call([moh, "report", log])


if __name__ == "__main__":
    sys.exit(main())
