"""Summarise adaptive training runs for router calibration (docs/routing.md, "Entropy term").

Usage: python bench/summarize_routing_runs.py RUN_DIR...   (each made by `moh train --out RUN_DIR`)

Per run, one line: mean hard heads per token per layer and the head-load coefficient of variation
(std / mean over heads) and router entropy per layer, each averaged over the last 10% of logged
steps of the phase; the last eval losses of both phases and exact match; and Spearman's rho between
the predicted complexity (mean over layers) and the next-token cross-entropy, over every next-token
prediction of the embedded corpus with the run's final model.pt (rho from ranks, ties broken by order).
"""
import json, sys
import numpy as np, torch
from moh.config import from_dict
from moh.model import LM
from moh.tokenizer import Tokenizer
from moh.data import load_corpus

def ranks(a):  # 0..n-1 by value
    r = np.empty(len(a)); r[np.argsort(a, kind="stable")] = np.arange(len(a)); return r

def spearman(model_pt):
    st = torch.load(model_pt, weights_only=True)
    cfg = from_dict(st["config"]); tok = Tokenizer.from_dict(st["tokenizer"])
    model = LM(cfg, tok.vocab_size); model.load_state_dict(st["model"]); model.eval()
    texts = load_corpus(None).texts()
    cs, ls = [], []
    with torch.no_grad():
        for t in texts:
            ids = tok.encode(t)[: cfg.max_len]
            idx = torch.tensor([ids])
            logits, _, routes = model(idx)
            ce = torch.nn.functional.cross_entropy(logits[0, :-1], idx[0, 1:], reduction="none")
            c = torch.stack([r.complexity[0, :-1] for r in routes]).mean(0)
            cs.append(c.numpy()); ls.append(ce.numpy())
    c, l = np.concatenate(cs), np.concatenate(ls)
    return float(np.corrcoef(ranks(c), ranks(l))[0, 1]), len(c)

for d in sys.argv[1:]:
    recs = [json.loads(x) for x in open(f"{d}/run.jsonl")]
    steps = [r for r in recs if r["event"] == "step"]
    evals = [r for r in recs if r["event"] == "eval"]
    pre = [s for s in steps if s["phase"] == "pretrain"]; ins = [s for s in steps if s["phase"] == "instruct"]
    def tail(ss, f):  # mean over the last 10% of the phase's logged steps
        n = max(1, len(ss) // 10); return np.mean([f(s) for s in ss[-n:]], axis=0)
    L = len(steps[-1]["layers"])
    heads = [tail(pre, lambda s: s["layers"][i]["heads_mean"]) for i in range(L)]
    heads_i = [tail(ins, lambda s: s["layers"][i]["heads_mean"]) for i in range(L)]
    cv = [tail(pre, lambda s: np.std(s["layers"][i]["head_load"]) / np.mean(s["layers"][i]["head_load"])) for i in range(L)]
    ent = [tail(pre, lambda s: s["layers"][i]["entropy"]) for i in range(L)]
    pe = [e for e in evals if e["phase"] == "pretrain"][-1]; ie = [e for e in evals if e["phase"] == "instruct"][-1]
    rho, n = spearman(f"{d}/model.pt")
    print(f"{d.split('/')[-1]:16s} heads(pre) {' '.join(f'{h:.2f}' for h in heads)} | heads(ins) {' '.join(f'{h:.2f}' for h in heads_i)} "
          f"| loadCV {' '.join(f'{c:.3f}' for c in cv)} | ent {' '.join(f'{e:.2f}' for e in ent)} "
          f"| lm_pre {tail(pre, lambda s: s['lm_loss']):.4f} | eval pre {pe['loss']:.4f} ins {ie['loss']:.4f} EM {ie['exact_match']:.2f} "
          f"| spearman(c, tok loss) {rho:+.3f} (n={n})")
