"""Calibration of the generic criteria (analyze/generic_criteria.toml) on real recorder logs.

    .venv/bin/python bench/calibrate_generic.py [--work DIR] [--seeds 5] [--no-train]

Population (all written through moh.monitor.Recorder, producer "moh.monitor"):
  own_moe healthy     examples/own_moe.py, seeds 0..N-1 (top-2 of 4 experts, 150 steps)
  own_moe detached    --detach-router (router logits cut from the graph), seeds 0, 1
  own_moe forced      --force-expert 0 (every token to expert 0), seeds 0, 1
  hf <family>         tiny Mixtral, Qwen2-MoE, OLMoE built from configs (random init, no
                      download), hooked with moh.monitor.hf.attach, trained 60 steps on the
                      embedded corpus (needs the [hf] extra)
For each criterion: every run's value per layer, the worst healthy value and its margin to the
bound, and which broken runs the criterion catches. JSON: bench/results/calibrate_generic.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HF = {
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  dict(num_experts=6, num_experts_per_tok=2, moe_intermediate_size=64,
                       shared_expert_intermediate_size=64)),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", dict(num_experts=8, num_experts_per_tok=2)),
}


def own_moe(out: Path, *flags: str) -> None:
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "own_moe.py"), str(out), "--no-report", *flags],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if r.returncode:
        raise SystemExit(f"own_moe {flags} failed: {r.stderr[-500:]}")


def hf_run(family: str, out: Path, steps: int = 60, seed: int = 0) -> None:
    import torch
    import transformers

    from moh.data import load_corpus
    from moh.monitor import Recorder
    from moh.monitor.hf import attach

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    text = "\n".join(load_corpus(None).pretrain)
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text])
    cfg_name, model_name, extra = HF[family]
    cfg = getattr(transformers, cfg_name)(vocab_size=len(chars), hidden_size=64, intermediate_size=128,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                          max_position_embeddings=64, bos_token_id=None, eos_token_id=None,
                                          pad_token_id=None, **extra)
    model = getattr(transformers, model_name)(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ctx, batch = 32, 16
    with Recorder(out, model=model, config={"family": family, "lr": 3e-3}, overwrite=True) as rec:
        attach(model, rec)
        for step in range(1, steps + 1):
            starts = torch.randint(0, len(data) - ctx, (batch,))
            x = torch.stack([data[s:s + ctx] for s in starts])
            loss = model(input_ids=x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            rec.step(step, loss=loss.item(), lr=3e-3)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()


def population(seeds: int) -> dict[str, tuple[str, list[str]]]:
    """name -> (kind: healthy | detached | forced, own_moe flags or ["hf", family])."""
    pop = {f"own_moe_s{s}": ("healthy", ["--seed", str(s)]) for s in range(seeds)}
    pop |= {f"detached_s{s}": ("detached", ["--seed", str(s), "--detach-router"]) for s in range(2)}
    pop |= {f"forced_s{s}": ("forced", ["--seed", str(s), "--force-expert", "0"]) for s in range(2)}
    pop |= {f"hf_{f}": ("healthy", ["hf", f]) for f in HF}
    return pop


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/moh_calibrate_generic")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--no-train", action="store_true", help="judge the logs already in --work")
    a = ap.parse_args(argv)
    work = Path(a.work)
    pop = population(a.seeds)
    if not a.no_train:
        for name, (_, flags) in pop.items():
            t = time.perf_counter()
            if flags[0] == "hf":
                try:
                    hf_run(flags[1], work / name)
                except ImportError:
                    print(f"{name}: skipped (no transformers)")
                    continue
            else:
                own_moe(work / name, *flags)
            print(f"{name}: {time.perf_counter() - t:.1f} s", flush=True)

    from analyze.criteria import criteria_for, evaluate
    from analyze.findings import find_all
    from analyze.load import load_run

    table: dict[str, dict] = {}
    for name, (kind, _) in pop.items():
        path = work / name / "run.jsonl"
        if not path.exists():
            continue
        run = load_run(path)
        res = evaluate(run, criteria_for(run))
        table[name] = {"kind": kind, "results": [r.to_dict() for r in res],
                       "errors": sorted({f.code for f in find_all(run) if f.severity == "error"})}
    crits = list(dict.fromkeys(r["name"] for t in table.values() for r in t["results"]))
    summary = {}
    for c in crits:
        rows = {n: [r for r in t["results"] if r["name"] == c] for n, t in table.items()}
        status = {n: sorted({r["status"] for r in rs}) for n, rs in rows.items()}
        healthy_ok = all(s in (["pass"], ["missing"]) or s == ["missing", "pass"] for n, s in status.items()
                         if table[n]["kind"] == "healthy")
        caught = sorted(n for n, s in status.items() if table[n]["kind"] != "healthy" and "fail" in s)
        vals = {n: [r["value"] for r in rs] for n, rs in rows.items()}
        summary[c] = {"target": rows[next(iter(rows))][0]["target"], "healthy_all_pass": healthy_ok,
                      "broken_caught": caught, "values": vals, "status": status}
        print(f"\n{c}: target {summary[c]['target']}; healthy all pass: {healthy_ok}; catches: {caught or 'none'}")
        for n, v in vals.items():
            show = [round(x, 4) if isinstance(x, float) and math.isfinite(x) else x for x in v]
            print(f"  {table[n]['kind']:9s} {n:14s} {status[n]} {show}")
    for n, t in table.items():
        print(f"error findings {n}: {t['errors'] or 'none'}")
    out = ROOT / "bench" / "results" / "calibrate_generic.json"
    out.write_text(json.dumps({"criteria": summary, "errors": {n: t["errors"] for n, t in table.items()}},
                              indent=1, default=str))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
