"""Time to target on the reference corpus, next to the reference (Rust) trainer's own log.

    .venv/bin/python bench/bench_time_to_target.py [--data ../shared/rustgpt/data] [--router adaptive]

One full two-phase `moh.train.train` run (default config, `log_every = 1` so that every step's
loss is in run.jsonl) on the reference corpus. Figures, all read back from the run.jsonl the
engine wrote:
- epoch loss = mean of the step records' `loss` (total loss: LM + weighted aux terms, the
  closest match to the reference log, whose loss includes its load-balance term) over all
  steps of the epoch; `lm_loss` means are given too;
- time to target = `elapsed` (seconds since run start, setup included) of the last step of
  the first pre-training epoch whose epoch loss is <= 0.40;
- whole run = run_end `wall_s` (both phases, both end-of-phase evaluations, checkpoint);
- end state per phase: last epoch loss, last step's grad norm (before clipping), exact match,
  and the greedy answer to "User: How do mountains form?" against the corpus's own answer
  (read from chat_training_data.json here, not copied).
The reference figures are read from its log (../shared/rustgpt/logs/e70e746_...txt) through
analyze.rustgpt: epoch lines carry wall-clock stamps, its loss is the epoch mean and its
grad_norm the epoch mean after clipping at 100. Goal (issue 7): >= 4x faster.
JSON: bench/results/bench_time_to_target.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _engine import ROOT, load_avg, table, write_json  # noqa: E402
from moh import schema  # noqa: E402
from moh.config import Config  # noqa: E402
from moh.data import split_prompt  # noqa: E402
from moh.train import train  # noqa: E402

SHARED = ROOT.parent / "shared" / "rustgpt"
REF_LOG = SHARED / "logs" / "e70e746_build_run_after_fix.txt"
PROMPT = "User: How do mountains form?"
TARGET = 0.40
GOAL = 4.0


def reference_figures(log: Path) -> dict:
    from analyze import rustgpt

    recs = list(rustgpt.parse(log.read_bytes(), name=str(log)))
    steps = [r for r in recs if r["event"] == schema.STEP]
    pre = [r for r in steps if r["phase"] == schema.PHASE_PRETRAIN]
    ins = [r for r in steps if r["phase"] == schema.PHASE_INSTRUCT]
    hit = next((r for r in pre if r["loss"] <= TARGET), None)
    end = next(r for r in recs if r["event"] == schema.RUN_END)
    ev = [r for r in recs if r["event"] == schema.EVAL]
    out = ev[-1]["samples"][0]["output"] if ev and ev[-1]["samples"] else None
    return {
        "log": log.name,
        "target_epoch": None if hit is None else hit["epoch"],
        "time_to_target_s": None if hit is None else hit["elapsed"],
        "wall_s": end["wall_s"],
        "note": "times from the first to the given epoch line (the first line is written after epoch 0)",
        "pretrain_end": {"epochs": len(pre), "loss": pre[-1]["loss"], "grad_norm": pre[-1]["grad_norm"]},
        "instruct_end": {"epochs": len(ins), "loss": ins[-1]["loss"], "grad_norm": ins[-1]["grad_norm"]},
        "mountains_output": out,
    }


def expected_answer(data: Path) -> str:
    pairs = json.loads((data / "chat_training_data.json").read_text(encoding="utf-8"))
    for text in pairs:
        sp = split_prompt(" ".join(text.split()))
        if sp and sp[0].startswith(PROMPT):
            return sp[1].replace("</s>", "").strip()
    raise SystemExit(f"{PROMPT!r} not found in {data}/chat_training_data.json")


def analyse(path: Path) -> dict:
    recs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    by_epoch: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in recs:
        if r["event"] == schema.STEP:
            by_epoch[(r["phase"], r["epoch"])].append(r)
    epochs = []
    for (phase, epoch), rs in by_epoch.items():
        epochs.append({"phase": phase, "epoch": epoch, "steps": len(rs),
                       "loss": statistics.fmean(r["loss"] for r in rs),
                       "lm_loss": statistics.fmean(r["lm_loss"] for r in rs),
                       "elapsed": rs[-1]["elapsed"], "grad_norm_last": rs[-1]["grad_norm"],
                       "heads_mean_last": statistics.fmean(l["heads_mean"] for l in rs[-1]["layers"])})
    pre = [e for e in epochs if e["phase"] == schema.PHASE_PRETRAIN]
    hit = next((e for e in pre if e["loss"] <= TARGET), None)
    evals = {r["phase"]: r for r in recs if r["event"] == schema.EVAL}
    end = next(r for r in recs if r["event"] == schema.RUN_END)
    phases = {}
    for phase in (schema.PHASE_PRETRAIN, schema.PHASE_INSTRUCT):
        es = [e for e in epochs if e["phase"] == phase]
        ev = evals.get(phase, {})
        phases[phase] = {"epochs": len(es), "epoch_loss": es[-1]["loss"], "epoch_lm_loss": es[-1]["lm_loss"],
                         "grad_norm_last_step": es[-1]["grad_norm_last"],
                         "heads_mean_last_step": es[-1]["heads_mean_last"],
                         "end_elapsed_s": es[-1]["elapsed"], "eval_loss": ev.get("loss"),
                         "exact_match": ev.get("exact_match"),
                         "mountains": next((s for s in ev.get("samples", []) if s["prompt"].startswith(PROMPT)), None)}
    return {"time_to_target_s": None if hit is None else hit["elapsed"],
            "target_epoch": None if hit is None else hit["epoch"], "wall_s": end["wall_s"],
            "status": end["status"], "steps": end["steps"], "phases": phases, "epochs": epochs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED / "data")
    ap.add_argument("--router", default="adaptive")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args(argv)

    from moh.config import parse_override
    cfg = Config(data=str(a.data), router=a.router, log_every=1,
                 **dict(parse_override(s) for s in a.set))
    ref = reference_figures(REF_LOG)
    expected = expected_answer(a.data)
    load0 = load_avg()
    with tempfile.TemporaryDirectory() as tmp:
        c = time.process_time()
        train(cfg, tmp)
        cpu_s = time.process_time() - c
        ours = analyse(Path(tmp) / "run.jsonl")
    load1 = load_avg()
    ours["cpu_s"] = cpu_s
    ins = ours["phases"][schema.PHASE_INSTRUCT]
    answer = (ins["mountains"] or {}).get("output")
    exact = answer == expected

    rows = [
        ["time to pre-training epoch loss <= 0.40 (s)", ref["time_to_target_s"], ours["time_to_target_s"],
         _ratio(ref["time_to_target_s"], ours["time_to_target_s"])],
        ["  reached at epoch (0-based)", ref["target_epoch"], ours["target_epoch"], ""],
        ["whole two-phase run (s)", ref["wall_s"], ours["wall_s"], _ratio(ref["wall_s"], ours["wall_s"])],
        ["pre-training epochs", ref["pretrain_end"]["epochs"], ours["phases"]["pretrain"]["epochs"], ""],
        ["pre-training end loss", ref["pretrain_end"]["loss"], ours["phases"]["pretrain"]["epoch_loss"], ""],
        ["pre-training end grad norm", ref["pretrain_end"]["grad_norm"],
         ours["phases"]["pretrain"]["grad_norm_last_step"], ""],
        ["instruction epochs", ref["instruct_end"]["epochs"], ours["phases"]["instruct"]["epochs"], ""],
        ["instruction end loss", ref["instruct_end"]["loss"], ins["epoch_loss"], ""],
        ["instruction end grad norm", ref["instruct_end"]["grad_norm"], ins["grad_norm_last_step"], ""],
        ["instruction exact match (held prompts)", "n/a", ins["exact_match"], ""],
        ["'How do mountains form?' exact", "yes (per its README)", "yes" if exact else "NO", ""],
    ]
    print(f"reference corpus {a.data}, router={a.router}, threads={torch.get_num_threads()} (config {cfg.threads}), "
          f"load avg {load0[0]:.2f} -> {load1[0]:.2f}, our CPU time {cpu_s:.1f} s")
    print(table(["figure", "reference (its machine)", "moh (this machine)", "speed-up"], rows))
    print(f"expected: {expected}\nours:     {answer}")
    speed = ref["time_to_target_s"] / ours["time_to_target_s"] if ours["time_to_target_s"] else None
    total = ref["wall_s"] / ours["wall_s"]
    ok = bool(speed and speed >= GOAL and total >= GOAL and exact)
    print(f"goal >= {GOAL}x faster with the same end state: {'met' if ok else 'NOT met'} "
          f"(to target {speed and round(speed, 2)}x, whole run {total:.2f}x)")
    payload = {"config": cfg.to_dict(), "loadavg_start": load0, "reference": ref, "ours": ours,
               "expected_answer": expected, "answer": answer, "answer_exact": exact,
               "speedup_to_target": speed, "speedup_whole_run": total, "goal": GOAL, "goal_met": ok,
               "command": "bench/bench_time_to_target.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"wrote {write_json('bench_time_to_target', payload)}")
    return 0


def _ratio(ref, ours) -> str:
    return "" if not ref or not ours else f"{ref / ours:.2f}x"


if __name__ == "__main__":
    sys.exit(main())
