"""Compute actually skipped: attention FLOPs the hard head masks would save, and whether an
inference path that skips unselected heads turns that into wall-clock savings.

    .venv/bin/python bench/bench_skip.py [--run DIR] [--reps 7] [--long 128,256,512]

`--run DIR`: a finished `moh train --out DIR` run (run.jsonl + model.pt); without it a default
run (embedded corpus, adaptive) is trained into a temporary directory first (~2-3 min).
1. FLOPs: from the run's telemetry (last step record of each phase: heads_mean per layer) and,
   exactly, from the trained model's hard masks on the instruction batches (per query token t
   a selected head costs QK^T + AV = 4 (t+1) D multiply-adds x2; Q and the output projection
   slice 4 C D). Spent relative to dense = selected / all, for the attention core, for the
   whole attention block (K, V are still computed for every head: later tokens may need them)
   and for the whole forward pass (MLP, embeddings, vocabulary projection unchanged).
2. Wall clock (inference, no grad): the engine's path (every head computed by SDPA, outputs
   multiplied by the 0/1 mask) against a gather-based skip path (only selected (b, h, t) query
   rows: gather their q and their row's K, V, masked softmax, scatter back), both checked to
   give the same output, on the trained model at its own sizes and on an untrained model of
   the same width at longer sequences with random masks of the same mean head count.
JSON: bench/results/bench_skip.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _engine import load_avg, table, write_json  # noqa: E402
from moh import schema  # noqa: E402
from moh.config import Config, from_dict  # noqa: E402
from moh.data import load_corpus, make_batches  # noqa: E402
from moh.model import LM  # noqa: E402
from moh.tokenizer import Tokenizer  # noqa: E402


def skip_attention(attn, x: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    """CausalSelfAttention output computing only the selected (b, t, h) query rows.

    hard (B, T, H) bool: the router's mask (gates are exactly this mask in the forward pass).
    """
    B, T, C = x.shape
    H = attn.n_heads
    D = C // H
    q, k, v = attn.qkv(x).split(C, dim=2)
    q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
    b, h, t = hard.permute(0, 2, 1).nonzero(as_tuple=True)  # selected query rows
    qs = q[b, h, t]  # (n, D)
    ks, vs = k[b, h], v[b, h]  # (n, T, D): the row's keys and values
    scores = torch.einsum("nd,ntd->nt", qs, ks) / D**0.5
    scores.masked_fill_(torch.arange(T)[None, :] > t[:, None], float("-inf"))
    ys = torch.einsum("nt,ntd->nd", scores.softmax(-1), vs)
    y = torch.zeros(B, H, T, D, dtype=x.dtype)
    y[b, h, t] = ys
    return attn.proj(y.transpose(1, 2).reshape(B, T, C))


@torch.no_grad()
def features(model: LM, idx: torch.Tensor, skip: bool, masks: list[torch.Tensor] | None = None):
    B, T = idx.shape
    x = model.tok_emb(idx) + model.pos_emb(torch.arange(T))
    for i, block in enumerate(model.blocks):
        xn = block.ln1(x)
        if masks is None:
            hard = block.attn.router(xn).hard
        else:
            hard = masks[i]
        if skip:
            a = skip_attention(block.attn, xn, hard)
        elif masks is None:
            a, _ = block.attn(xn)
        else:  # dense compute, fixed mask
            C = x.shape[-1]
            H = block.attn.n_heads
            q, k, v = block.attn.qkv(xn).split(C, dim=2)
            q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True) * hard.transpose(1, 2).unsqueeze(-1)
            a = block.attn.proj(y.transpose(1, 2).reshape(B, T, C))
        x = x + a
        x = x + block.mlp(block.ln2(x))
    return model.ln_f(x)


def time_pair(fa, fb, reps: int, inner: int = 3) -> tuple[list[float], list[float]]:
    ta, tb = [], []
    for r in range(reps):
        for f, acc in ((fa, ta), (fb, tb)) if r % 2 == 0 else ((fb, tb), (fa, ta)):
            c = time.process_time()
            for _ in range(inner):
                f()
            acc.append((time.process_time() - c) / inner)
    return ta, tb


def flops(cfg: Config, vocab: int, hard_masks: list[torch.Tensor], valid: torch.Tensor) -> dict:
    """Multiply-add x2 FLOPs of one forward pass: dense vs with unselected heads skipped."""
    C, H, Dff = cfg.d_model, cfg.n_heads, cfg.d_ff
    D = C // H
    pos = torch.arange(valid.shape[1]).float()[None, :].expand_as(valid)  # query index t
    keys = ((pos + 1) * valid).sum()  # sum over real query tokens of (t + 1) keys
    n_tok = valid.sum()
    core_dense = core_spent = 0.0
    qo_dense = qo_spent = 0.0
    for hard in hard_masks:
        sel = hard & valid.unsqueeze(-1)
        core_dense += float(H * 4 * D * keys)
        core_spent += float((sel.sum(-1).float() * (pos + 1) * 4 * D).sum())
        qo_dense += float(n_tok * H * 2 * 2 * C * D)  # Q projection + output projection, per head
        qo_spent += float(sel.sum() * 2 * 2 * C * D)
    kv = float(n_tok) * cfg.n_layers * 2 * 2 * C * C  # K, V projections: always all heads
    rest = float(n_tok) * (cfg.n_layers * 2 * 2 * C * Dff + 2 * C * vocab)  # MLP + vocabulary
    attn_dense, attn_spent = core_dense + qo_dense + kv, core_spent + qo_spent + kv
    return {"core": core_spent / core_dense, "attention_block": attn_spent / attn_dense,
            "forward": (attn_spent + rest) / (attn_dense + rest),
            "heads_mean": float(sum((h & valid.unsqueeze(-1)).sum() for h in hard_masks)
                                / (n_tok * len(hard_masks)))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--long", default="128,256,512", help="sequence lengths for the synthetic test")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    tmp = None
    if a.run is None:
        from moh.train import train
        tmp = tempfile.TemporaryDirectory()
        a.run = Path(tmp.name)
        print("training a default run first ...", flush=True)
        train(Config(), a.run)
    ck = torch.load(a.run / "model.pt", weights_only=True)
    cfg = from_dict(ck["config"])
    torch.set_num_threads(cfg.threads or 1)
    tok = Tokenizer.from_dict(ck["tokenizer"]) if hasattr(Tokenizer, "from_dict") else None
    corpus = load_corpus(cfg.data)
    if tok is None:
        tok = Tokenizer.fit(corpus.texts())
    model = LM(cfg, ck["vocab_size"])
    model.load_state_dict(ck["model"])
    model.eval()
    recs = [json.loads(line) for line in (a.run / "run.jsonl").read_text().splitlines()]
    last = {}
    for r in recs:
        if r["event"] == schema.STEP:
            last[r["phase"]] = r
    tele = {ph: [l["heads_mean"] for l in r["layers"]] for ph, r in last.items()}
    load0 = load_avg()

    rows, res = [], {"telemetry_heads_mean": tele, "flops": {}, "wall": {}}
    for ph, hm in tele.items():
        frac = sum(hm) / len(hm) / cfg.n_heads
        res["flops"][f"telemetry_{ph}"] = {"core": frac}
        rows.append([f"telemetry, end of {ph} (heads_mean {sum(hm) / len(hm):.2f}/{cfg.n_heads})", frac, "", ""])
    for ph, texts, bsz in (("pretrain", corpus.pretrain, cfg.batch_size), ("instruct", corpus.instruct,
                                                                           cfg.instruct_batch_size)):
        seqs = [tok.encode(t) for t in texts]
        batches = make_batches(seqs, bsz, seed=0, epoch=0, pad_id=tok.pad_id, max_len=cfg.max_len)
        agg = {"core": [], "attention_block": [], "forward": [], "heads_mean": []}
        for idx, _ in batches:
            with torch.no_grad():
                _, routes = model.features(idx)
            f = flops(cfg, ck["vocab_size"], [r.hard for r in routes], idx != tok.pad_id)
            for k in agg:
                agg[k].append(f[k])
        f = {k: statistics.fmean(v) for k, v in agg.items()}
        res["flops"][f"masks_{ph}"] = f
        rows.append([f"trained masks on {ph} batches (heads_mean {f['heads_mean']:.2f})", f["core"],
                     f["attention_block"], f["forward"]])
    print(f"run {a.run}, router {cfg.router}, {cfg.n_layers} layers x {cfg.n_heads} heads, d_model {cfg.d_model}, "
          f"load avg {load0[0]:.2f}")
    print("\nFLOPs spent relative to dense (1.0 = nothing skipped):")
    print(table(["source", "attention core", "attention block", "whole forward"], rows))

    # --- wall clock -------------------------------------------------------------------------
    wrows = []
    seqs = [tok.encode(t) for t in corpus.pretrain]
    batches = make_batches(seqs, cfg.batch_size, seed=0, epoch=0, pad_id=tok.pad_id, max_len=cfg.max_len)
    idx = max(batches, key=lambda b: b[0].shape[1])[0]  # the longest batch
    with torch.no_grad():
        ref, skp = features(model, idx, False), features(model, idx, True)
    err = float((ref - skp).abs().max())
    ta, tb = time_pair(lambda: features(model, idx, False), lambda: features(model, idx, True), a.reps)
    res["wall"]["trained"] = {"shape": list(idx.shape), "dense_s": ta, "skip_s": tb, "max_abs_diff": err}
    wrows.append([f"trained model, batch {tuple(idx.shape)}", statistics.median(ta) * 1e3,
                  statistics.median(tb) * 1e3, statistics.median(tb) / statistics.median(ta), f"{err:.1e}"])
    frac = f["heads_mean"] / cfg.n_heads
    for T in [int(s) for s in a.long.split(",") if s]:
        c2 = cfg.replace(max_len=T, router="dense")
        torch.manual_seed(0)
        m2 = LM(c2, ck["vocab_size"]).eval()
        B = max(1, cfg.batch_size * cfg.max_len // T)
        idx2 = torch.randint(1, ck["vocab_size"], (B, T))
        g = torch.Generator().manual_seed(0)
        masks = [torch.rand(B, T, cfg.n_heads, generator=g) < frac for _ in range(cfg.n_layers)]
        for mk in masks:
            mk[..., 0] |= ~mk.any(-1)
        with torch.no_grad():
            err = float((features(m2, idx2, False, masks) - features(m2, idx2, True, masks)).abs().max())
        ta, tb = time_pair(lambda: features(m2, idx2, False, masks), lambda: features(m2, idx2, True, masks),
                           max(3, a.reps // 2), inner=1)
        res["wall"][f"T{T}"] = {"shape": [B, T], "dense_s": ta, "skip_s": tb, "max_abs_diff": err,
                                "mask_fraction": frac}
        wrows.append([f"untrained, batch ({B}, {T}), random masks {frac:.2f}", statistics.median(ta) * 1e3,
                      statistics.median(tb) * 1e3, statistics.median(tb) / statistics.median(ta), f"{err:.1e}"])
    load1 = load_avg()
    print(f"\ninference forward (no grad), CPU ms, median of {a.reps} interleaved reps, load avg {load1[0]:.2f}:")
    print(table(["case", "all heads + mask", "skip path", "skip / dense", "max |diff|"], wrows))
    payload = {"run": str(a.run), "config": cfg.to_dict(), "loadavg_start": load0, **res,
               "command": "bench/bench_skip.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"wrote {write_json('bench_skip', payload)}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
