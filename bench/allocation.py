"""Does the adaptive router give hard tokens more heads? Measured on a trained run (issue 18).

Usage:
    python bench/allocation.py RUN_DIR [RUN_DIR ...] [--json OUT] [--sample N] [--seed S]

For each run directory (`moh train --out RUN_DIR`, read: model.pt, run.jsonl), per layer:

1. Correlations. Spearman's rho (ties share their average rank) of the token's hard head count
   and of its predicted complexity c against the next-token loss and against the model's
   predictive entropy (nats) at that position, on two texts:
   - instruct: the run's instruction examples, what the final model was last trained on;
   - pretrain: the run's pre-training examples, trained on first (after the instruction phase
               the final model has largely forgotten them: mean loss 4.5-7 nats on the default
               runs, against 0.2 on the instruction text, so they are reported apart);
   - heldout: examples of the other corpus (the embedded one for a run on a data directory, the
              reference trainer's ../shared/rustgpt/data for a run on the embedded corpus) that
              are not training examples and have at most 25% of words outside the run's
              vocabulary; positions whose next token is <unk> are left out (the corpora share
              too few whole sentences to require every word known: 12 on the embedded run).
   Position t's router decides the heads that predict token t + 1, so heads, complexity, loss
   and entropy are all read at t (as moh/alignment.py does during training).

2. Intervention, per layer and one token at a time: on a random sample of positions of the
   instruction text and, apart, of the pre-training text, the layer's hard mask at that one position is given one head fewer (the selected
   head with the lowest router probability is dropped; not possible at 1 head) or one head more
   (the unselected head with the highest probability is added; not possible at H heads), every
   other position and layer unchanged, and the change of that position's next-token loss is
   recorded. Each forced mask is checked to differ from the router's by exactly that one head.
   The changes are split by the quartile of the layer's complexity c over the sample: if the
   router allocates by usefulness, removing a head costs more in the top quartile (Q4) than in
   the bottom one (Q1).

Also read from run.jsonl: the final eval loss of each phase, exact match, the mean hard heads
per layer over the last 10% of pre-training steps, and the run's wall time.

Output: a compact table on stdout; with --json the full numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from moh.alignment import spearman  # noqa: E402
from moh.config import from_dict  # noqa: E402
from moh.data import DataError, load_corpus  # noqa: E402
from moh.model import LM  # noqa: E402
from moh.routing import Routing  # noqa: E402
from moh.tokenizer import Tokenizer, split  # noqa: E402

REFERENCE_DATA = ROOT.parent / "shared" / "rustgpt" / "data"
MAX_UNKNOWN = 0.25  # held-out examples: at most this fraction of words outside the vocabulary
PAIRS = (("heads", "loss"), ("heads", "entropy"), ("complexity", "loss"), ("complexity", "entropy"))


class RunError(Exception):
    """A run directory that cannot be measured; the message is one line."""


# --- loading ---------------------------------------------------------------------------------


def load_run(run_dir: Path) -> tuple[LM, Tokenizer, object]:
    path = run_dir / "model.pt"
    if not path.is_file():
        raise RunError(f"{run_dir}: no model.pt (train with `moh train --out {run_dir}`)")
    try:
        st = torch.load(path, weights_only=True)
        cfg = from_dict(st["config"])
    except Exception as e:  # a truncated or foreign file: any of torch's unpickling errors
        raise RunError(f"{path}: not a moh model file ({type(e).__name__})") from None
    if cfg.router != "adaptive":
        raise RunError(f"{run_dir}: router {cfg.router!r} has no per-token budget to measure")
    tok = Tokenizer.from_dict(st["tokenizer"])
    model = LM(cfg, tok.vocab_size)
    model.load_state_dict(st["model"])
    model.eval()
    return model, tok, cfg


def texts_of(cfg, tok: Tokenizer) -> dict[str, list[str]]:
    """{"instruct", "pretrain": the run's examples of each phase, "heldout": mostly in-vocabulary
    examples of the other corpus}."""
    corpus = load_corpus(cfg.data)
    train = corpus.texts()
    other = None if cfg.data is not None else REFERENCE_DATA
    try:
        candidates = load_corpus(other).texts()
    except DataError:
        candidates = []
    seen = set(train)
    vocab = set(tok.stoi)

    def mostly_known(t: str) -> bool:
        words = split(t)
        return bool(words) and sum(w not in vocab for w in words) <= MAX_UNKNOWN * len(words)

    held = [t for t in candidates if t not in seen and mostly_known(t)]
    return {"instruct": corpus.instruct, "pretrain": corpus.pretrain, "heldout": held}


# --- per-token table ---------------------------------------------------------------------------


def _batches(tok: Tokenizer, texts: list[str], max_len: int, size: int = 64):
    seqs = [ids[:max_len] for ids in (tok.encode(t) for t in texts) if len(ids) >= 2]
    for i in range(0, len(seqs), size):
        chunk = seqs[i:i + size]
        width = max(len(s) for s in chunk)
        idx = torch.full((len(chunk), width), tok.pad_id, dtype=torch.long)
        for r, s in enumerate(chunk):
            idx[r, :len(s)] = torch.tensor(s)
        yield idx, torch.tensor([len(s) for s in chunk])


def _has_target(idx: torch.Tensor, lengths: torch.Tensor, unk_id: int) -> torch.Tensor:
    """(B, T) True at positions followed by a real token that is not <unk> (the last real one
    has no target; predicting <unk> for a word the run never saw measures nothing)."""
    B, T = idx.shape
    nxt = torch.cat([idx[:, 1:], idx.new_full((B, 1), unk_id)], 1)
    return (torch.arange(T)[None, :] < (lengths[:, None] - 1)) & (nxt != unk_id)


@torch.no_grad()
def token_table(model: LM, tok: Tokenizer, texts: list[str]) -> dict[str, np.ndarray]:
    """Per target position: loss (N,), entropy (N,), heads, complexity and budget_bound (L, N)
    (budget_bound: the count is ceil(kappa), the budget cut it rather than the threshold)."""
    cols: dict[str, list] = {"loss": [], "entropy": [], "heads": [], "complexity": [], "budget_bound": []}
    for idx, lengths in _batches(tok, texts, model.cfg.max_len):
        logits, _, routings = model(idx)
        sel = _has_target(idx, lengths, tok.unk_id)
        lg = logits[sel].float()  # (N, V) predictions of the next token
        tgt = torch.cat([idx[:, 1:], idx[:, :1]], 1)[sel]  # the next token (wrapped column unused)
        logp = lg.log_softmax(-1)
        cols["loss"].append(F.nll_loss(logp, tgt, reduction="none").numpy())
        cols["entropy"].append((-(logp.exp() * logp).sum(-1)).numpy())
        cols["heads"].append(np.stack([r.hard[sel].sum(-1).numpy() for r in routings]))
        cols["complexity"].append(np.stack([r.complexity[sel].numpy() for r in routings]))
        # the budget, not the threshold, set the count: ceil(kappa) heads (the ranks j < kappa)
        cols["budget_bound"].append(np.stack([
            (r.hard[sel].sum(-1) == r.kappa[sel].ceil().clamp(max=r.hard.shape[-1])).numpy() for r in routings]))
    if not cols["loss"]:
        return {}
    return {k: np.concatenate(v, axis=-1).astype(np.float64) for k, v in cols.items()}


def correlations(table: dict[str, np.ndarray]) -> dict:
    """Per layer Spearman of heads / complexity vs loss / entropy, and their means over layers."""
    if not table:
        return {"n_tokens": 0, "layers": [], "mean": {}}
    layers = []
    for i in range(table["heads"].shape[0]):
        row = {}
        for x, y in PAIRS:
            r = float(spearman(torch.from_numpy(table[x][i]), torch.from_numpy(table[y])))
            row[f"{x}_{y}"] = None if np.isnan(r) else r
        row["heads_mean"] = float(table["heads"][i].mean())
        row["budget_bound"] = float(table["budget_bound"][i].mean())
        layers.append(row)
    mean = {f"{x}_{y}": _mean([lay[f"{x}_{y}"] for lay in layers]) for x, y in PAIRS}
    return {"n_tokens": int(table["loss"].shape[0]), "layers": layers, "mean": mean}


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


# --- intervention ------------------------------------------------------------------------------


def force_one(r: Routing, row: torch.Tensor, pos: torch.Tensor, delta: int) -> torch.Tensor:
    """Give token (row[k], pos[k]) one head fewer (delta -1) or more (+1) in routing r, in place.

    -1 drops the selected head with the lowest router probability, +1 adds the unselected head
    with the highest. Returns a bool (K,) of the tokens where that was possible (at least two
    heads to drop one, at most H - 1 to add one); the others are left unchanged."""
    hard = r.hard[row, pos]  # (K, H)
    p = r.probs[row, pos]
    if delta < 0:
        ok = hard.sum(-1) >= 2
        head = torch.where(hard, p, float("inf")).argmin(-1)
    else:
        ok = hard.sum(-1) < hard.shape[-1]
        head = torch.where(hard, float("-inf"), p).argmax(-1)
    new = hard.clone()
    new[torch.arange(len(row)), head] = delta > 0
    new = torch.where(ok[:, None], new, hard)
    forced = r.hard.clone()
    forced[row, pos] = new
    r.hard = forced
    gates = r.gates.clone()  # forward gates are exactly the hard mask (straight-through)
    gates[row, pos] = new.to(gates.dtype)
    r.gates = gates
    return ok


@torch.no_grad()
def intervene(model: LM, idx: torch.Tensor, lengths: torch.Tensor, layer: int, delta: int
              ) -> list[tuple[float, float, int, int, bool]]:
    """For each target position t of each row: the row copied, layer `layer`'s mask forced by
    `delta` at t only. Returns per position (complexity c_t, loss change, heads before, heads
    after, possible)."""
    base_logits, _, base_routes = model(idx)
    out = []
    for b in range(idx.shape[0]):
        n = int(lengths[b]) - 1  # target positions 0..n-1
        if n < 1:
            continue
        seq = idx[b:b + 1, :n + 1].expand(n, n + 1)
        pos = torch.arange(n)
        rows = torch.arange(n)
        seen: dict[str, torch.Tensor] = {}

        def hook(_m, _inp, r: Routing):
            seen["before"] = r.hard[rows, pos].sum(-1)
            seen["ok"] = force_one(r, rows, pos, delta)
            seen["after"] = r.hard[rows, pos].sum(-1)
            return r

        h = model.blocks[layer].attn.router.register_forward_hook(hook)
        try:
            logits, _, _ = model(seq)
        finally:
            h.remove()
        tgt = idx[b, 1:n + 1]
        new_loss = F.cross_entropy(logits[rows, pos].float(), tgt, reduction="none")
        old_loss = F.cross_entropy(base_logits[b, :n].float(), tgt, reduction="none")
        c = base_routes[layer].complexity[b, :n]
        for k in range(n):
            out.append((float(c[k]), float(new_loss[k] - old_loss[k]), int(seen["before"][k]),
                        int(seen["after"][k]), bool(seen["ok"][k])))
    return out


def quartile_effects(records: list[tuple[float, float, int, int, bool]]) -> list[dict]:
    """Mean loss change per complexity quartile (edges from all sampled tokens' c)."""
    if not records:
        return []
    c = np.array([r[0] for r in records])
    edges = np.quantile(c, [0.25, 0.5, 0.75])
    q = np.searchsorted(edges, c, side="right")  # 0..3
    rows = []
    for k in range(4):
        mine = [r for r, qk in zip(records, q) if qk == k and r[4]]
        d = np.array([r[1] for r in mine])
        rows.append({"quartile": k + 1, "n": len(mine), "n_impossible": int(np.sum(q == k)) - len(mine),
                     "dloss_mean": float(d.mean()) if len(d) else None,
                     "heads_before": float(np.mean([r[2] for r in mine])) if mine else None})
    return rows


def intervention(model: LM, tok: Tokenizer, texts: list[str], sample: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    chosen, n = [], 0
    for i in order:  # whole examples until `sample` target positions
        if n >= sample:
            break
        ids = tok.encode(texts[i])[: model.cfg.max_len]
        if len(ids) >= 2:
            chosen.append(texts[i])
            n += len(ids) - 1
    layers = []
    for layer in range(len(model.blocks)):
        entry = {"layer": layer}
        for delta, name in ((-1, "remove"), (1, "add")):
            recs = []
            for idx, lengths in _batches(tok, chosen, model.cfg.max_len):
                recs += intervene(model, idx, lengths, layer, delta)
            bad = [r for r in recs if r[4] and r[3] - r[2] != delta]
            if bad:  # the measurement would be of something else: refuse to report it
                raise AssertionError(f"layer {layer}: forced mask changed {bad[0][3] - bad[0][2]} heads, not {delta}")
            qs = quartile_effects(recs)
            entry[name] = {"quartiles": qs, "q4_minus_q1": _margin(qs)}
        layers.append(entry)
    return {"scope": "per layer, one token at a time", "n_tokens": n, "layers": layers,
            "remove_q4_minus_q1_mean": _mean([lay["remove"]["q4_minus_q1"] for lay in layers]),
            "add_q4_minus_q1_mean": _mean([lay["add"]["q4_minus_q1"] for lay in layers])}


def _margin(qs: list[dict]) -> float | None:
    if len(qs) < 4 or qs[0]["dloss_mean"] is None or qs[3]["dloss_mean"] is None:
        return None
    return qs[3]["dloss_mean"] - qs[0]["dloss_mean"]


# --- run.jsonl ---------------------------------------------------------------------------------


def run_summary(run_dir: Path) -> dict:
    recs = [json.loads(line) for line in (run_dir / "run.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in recs if r.get("event") == "step"]
    pre = [s for s in steps if s.get("phase") == "pretrain"]
    evals = [r for r in recs if r.get("event") == "eval"]
    last = {e["phase"]: e for e in evals}
    tail = pre[-max(1, len(pre) // 10):]
    heads = [float(np.mean([s["layers"][i]["heads_mean"] for s in tail])) for i in range(len(tail[0]["layers"]))] if tail else []
    times = [r["time"] for r in recs if isinstance(r.get("time"), (int, float))]
    return {"eval_loss": {p: last[p]["loss"] for p in last},
            "exact_match": last.get("instruct", {}).get("exact_match"),
            "heads_mean_final": heads,
            "wall_s": (max(times) - min(times)) if len(times) > 1 else None}


# --- report -------------------------------------------------------------------------------------


def measure(run_dir: Path, sample: int, seed: int) -> dict:
    model, tok, cfg = load_run(run_dir)
    texts = texts_of(cfg, tok)
    out = {"run": str(run_dir), "seed": cfg.seed, "data": cfg.data, "complexity_target": cfg.complexity_target,
           "summary": run_summary(run_dir), "heldout_examples": len(texts["heldout"])}
    for name, t in texts.items():
        out[name] = correlations(token_table(model, tok, t))
    out["intervention"] = {name: intervention(model, tok, texts[name], sample, seed)
                           for name in ("instruct", "pretrain")}
    return out


def _f(x, fmt="+.3f") -> str:
    return "-" if x is None else format(x, fmt)


def table(results: list[dict]) -> str:
    head = ("run", "rho(h,loss) ins/pre/ho", "rho(c,ent) ins/pre/ho", "remove dL Q1..Q4 ins (L-mean)",
            "Q4-Q1 ins/pre", "eval pre/ins", "heads", "wall s")
    lines = [" | ".join(head)]
    for r in results:
        texts = ("instruct", "pretrain", "heldout")
        iv = r["intervention"]
        qs = [_mean([lay["remove"]["quartiles"][k]["dloss_mean"] for lay in iv["instruct"]["layers"]])
              for k in range(4)]
        s = r["summary"]
        lines.append(" | ".join((
            Path(r["run"]).name,
            "/".join(_f(r[t]["mean"].get("heads_loss")) for t in texts),
            "/".join(_f(r[t]["mean"].get("complexity_entropy")) for t in texts),
            " ".join(_f(q, "+.4f") for q in qs),
            "/".join(_f(iv[t]["remove_q4_minus_q1_mean"], "+.4f") for t in ("instruct", "pretrain")),
            f"{_f(s['eval_loss'].get('pretrain'), '.4f')}/{_f(s['eval_loss'].get('instruct'), '.4f')}",
            " ".join(f"{h:.2f}" for h in s["heads_mean_final"]), _f(s["wall_s"], ".0f"))))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--json", type=Path, help="write every number here")
    ap.add_argument("--sample", type=int, default=1000, help="target positions for the intervention")
    ap.add_argument("--seed", type=int, default=0, help="which examples the intervention samples")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    try:
        for d in a.runs:
            results.append(measure(d, a.sample, a.seed))
    except (RunError, OSError, DataError) as e:
        print(f"allocation: {e}", file=sys.stderr)
        return 2
    print(table(results))
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
