"""A tiny randomly initialised Mixtral (Hugging Face transformers, nothing downloaded) trained
for a few dozen steps on the corpus embedded in moh, its routers recorded by `moh.monitor.hf`.

    pip install -e '.[hf]'
    python examples/hf_mixtral.py OUT_DIR [--steps 60]

The same three lines instrument a real Mixtral, Qwen2-MoE or OLMoE checkpoint:
    with Recorder(out_dir, model=model) as rec:
        attach(model, rec)
        ... loss.backward(); rec.step(step, loss=loss.item()) ...
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

import torch
from transformers import MixtralConfig, MixtralForCausalLM

from moh.data import load_corpus
from moh.monitor import Recorder
from moh.monitor.hf import attach


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--no-report", action="store_true", help="only train and write the log")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a model this small is fastest on one thread (see own_moe.py)

    text = "\n".join(load_corpus(None).pretrain)
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text])
    config = MixtralConfig(vocab_size=len(chars), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                           num_experts_per_tok=2, max_position_embeddings=64, output_router_logits=True,
                           router_aux_loss_coef=0.01, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    model = MixtralForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ctx, batch = 32, 16
    with Recorder(args.out_dir, model=model, config={"lr": 3e-3, "ctx": ctx, "batch": batch},
                  overwrite=True) as rec:
        attach(model, rec)
        for step in range(1, args.steps + 1):
            starts = torch.randint(0, len(data) - ctx, (batch,))
            x = torch.stack([data[s:s + ctx] for s in starts])
            out = model(input_ids=x, labels=x)  # loss includes the router's load-balancing term
            opt.zero_grad()
            out.loss.backward()
            lb = out.aux_loss.item()  # Mixtral's load-balancing term, in out.loss with its coefficient
            rec.step(step, loss=out.loss.item(), lm_loss=out.loss.item() - config.router_aux_loss_coef * lb,
                     lr=3e-3, aux={"load_balance": lb})
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    log = os.path.join(args.out_dir, "run.jsonl")
    print(f"wrote {log}")
    if args.no_report:
        return 0
    moh = shutil.which("moh", path=os.path.dirname(sys.executable)) or shutil.which("moh")
    return subprocess.call([moh, "report", log])


if __name__ == "__main__":
    sys.exit(main())
