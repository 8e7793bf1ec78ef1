"""The allocation A/B table: objective x corpus x seed, then mean and spread over seeds (issue 18).

Usage:
    python bench/allocation_ab.py ALLOCATION_JSON... [--md]

Reads the JSON lists `bench/allocation.py --json` writes. A run directory named
`<objective>_<corpus>_s<seed>` (e.g. ab_lossrank_ref_s2) is grouped by objective and corpus;
any other name is its own group. For each run it also asks `moh report RUN --format json` (a
real subprocess: the verdict the tool itself gives) for the final training LM loss of each
phase, the mean heads, the verdict and the warning findings. Columns, per run:

    rho(h,loss) / rho(c,ent)  mean over layers; instruction text / pre-training text / held-out
    remove Q1..Q4, Q4-Q1      loss change when one head is removed, by complexity quartile,
                              mean over layers (instruction text); the margin top minus bottom
                              quartile (instruction / pre-training text)
    lm pre/ins                final training LM loss per phase (the `loss` criterion's value)
    heads                     the `average_heads` criterion's value, pre-training, layer mean
    verdict, warnings         the report's verdict and its warning finding codes
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MOH = Path(sys.executable).with_name("moh")
NAME = re.compile(r"^(?P<group>.+)_s(?P<seed>\d+)$")


def report(run: str) -> dict:
    p = subprocess.run([str(MOH), "report", run, "--format", "json"], capture_output=True, text=True)
    if not p.stdout.strip():
        return {"verdict": f"report failed: {p.stderr.strip()[:80]}", "criteria": [], "findings": []}
    return json.loads(p.stdout)


def criterion(rep: dict, name: str, phase: str) -> float | None:
    vals = [c["value"]["value"] for c in rep["criteria"]
            if c["name"] == name and c["phase"] == phase and c["value"].get("type") == "number"]
    return statistics.fmean(vals) if vals else None


def row(res: dict) -> dict:
    rep = report(res["run"])
    iv = res["intervention"]
    layers = iv["instruct"]["layers"]
    qs = []
    for k in range(4):
        v = [lay["remove"]["quartiles"][k]["dloss_mean"] for lay in layers]
        v = [x for x in v if x is not None]
        qs.append(statistics.fmean(v) if v else None)
    name = Path(res["run"]).name
    m = NAME.match(name)
    out = {"run": name, "group": m["group"] if m else name, "seed": res["seed"], "rm": qs}
    for t, short in (("instruct", "ins"), ("pretrain", "pre"), ("heldout", "ho")):
        out[f"h_loss_{short}"] = res[t]["mean"].get("heads_loss")
        out[f"c_ent_{short}"] = res[t]["mean"].get("complexity_entropy")
        out[f"c_loss_{short}"] = res[t]["mean"].get("complexity_loss")
    for t, short in (("instruct", "ins"), ("pretrain", "pre")):
        out[f"rm_margin_{short}"] = iv[t]["remove_q4_minus_q1_mean"]
        out[f"add_margin_{short}"] = iv[t]["add_q4_minus_q1_mean"]
    out |= {
        "lm_pre": criterion(rep, "loss", "pretrain"), "lm_ins": criterion(rep, "loss", "instruct"),
        "heads": criterion(rep, "average_heads", "pretrain"),
        "verdict": rep["verdict"],
        "warnings": sorted({f["code"] for f in rep["findings"] if f["severity"] in ("warning", "error")}),
        "wall_s": res["summary"]["wall_s"],
    }
    return out


def _f(x, fmt="+.3f") -> str:
    return "—" if x is None else format(x, fmt)


def _ms(xs: list, fmt="+.3f") -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    if len(xs) == 1:
        return format(xs[0], fmt)
    return f"{format(statistics.fmean(xs), fmt)} ± {format(statistics.stdev(xs), fmt.lstrip('+'))}"


RUN_HEAD = ("run", "seed", "ρ(h,loss) ins / pre / ho", "ρ(c,ent) ins / pre / ho", "remove ΔL Q1 Q2 Q3 Q4 (ins)",
            "remove Q4−Q1 ins / pre", "lm pre / ins", "heads", "verdict, warnings", "wall s")
GROUP_HEAD = ("objective_corpus", "seeds", "ρ(h,loss) ins", "ρ(h,loss) pre", "ρ(h,loss) ho", "ρ(c,ent) ins",
              "ρ(c,ent) pre", "ρ(c,ent) ho", "remove Q4−Q1 ins", "remove Q4−Q1 pre", "lm pre", "lm ins", "heads",
              "wall s")


def run_line(r: dict) -> list[str]:
    three = ("ins", "pre", "ho")
    return [r["run"], str(r["seed"]), " / ".join(_f(r[f"h_loss_{t}"]) for t in three),
            " / ".join(_f(r[f"c_ent_{t}"]) for t in three),
            " ".join(_f(q, "+.3f") for q in r["rm"]),
            f"{_f(r['rm_margin_ins'], '+.3f')} / {_f(r['rm_margin_pre'], '+.3f')}",
            f"{_f(r['lm_pre'], '.4f')} / {_f(r['lm_ins'], '.4f')}", _f(r["heads"], ".2f"),
            r["verdict"] + (", " + " ".join(r["warnings"]) if r["warnings"] else ""), _f(r["wall_s"], ".0f")]


def group_lines(rows: list[dict]) -> list[list[str]]:
    out = []
    for g in dict.fromkeys(r["group"] for r in rows):
        rs = [r for r in rows if r["group"] == g]
        out.append([g, str(len(rs))] + [_ms([r[k] for r in rs], f) for k, f in (
            ("h_loss_ins", "+.3f"), ("h_loss_pre", "+.3f"), ("h_loss_ho", "+.3f"),
            ("c_ent_ins", "+.3f"), ("c_ent_pre", "+.3f"), ("c_ent_ho", "+.3f"),
            ("rm_margin_ins", "+.3f"), ("rm_margin_pre", "+.3f"), ("lm_pre", ".4f"), ("lm_ins", ".4f"),
            ("heads", ".2f"), ("wall_s", ".0f"))])
    return out


def md(head, lines) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                     ["| " + " | ".join(x) + " |" for x in lines])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("--json", type=Path, help="write the rows here")
    a = ap.parse_args(argv)
    try:
        results = [r for p in a.results for r in json.loads(p.read_text())]
    except (OSError, json.JSONDecodeError) as e:
        print(f"allocation_ab: {e}", file=sys.stderr)
        return 2
    rows = [row(r) for r in results]
    print(md(RUN_HEAD, [run_line(r) for r in rows]))
    print()
    print(md(GROUP_HEAD, group_lines(rows)))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
