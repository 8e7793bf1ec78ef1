"""The allocation A/B table: objective x corpus x seed, then mean and spread over seeds (issue 18).

Usage:
    python bench/allocation_ab.py ALLOCATION_JSON... [--md]

Reads the JSON lists `bench/allocation.py --json` writes. A run directory named
`<objective>_<corpus>_s<seed>` (e.g. ab_lossrank_ref_s2) is grouped by objective and corpus;
any other name is its own group. For each run it also asks `moh report RUN --format json` (a
real subprocess: the verdict the tool itself gives) for the final training LM loss of each
phase, the mean heads, the verdict and the warning findings. Columns, per run:

    rho(h,loss) / rho(c,ent)  mean over layers, train text / held-out text
    rm Q1..Q4, Q4-Q1          loss change when one head is removed, by complexity quartile,
                              mean over layers; the margin top minus bottom quartile
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
    layers = res["intervention"]["layers"]
    qs = []
    for k in range(4):
        v = [lay["remove"]["quartiles"][k]["dloss_mean"] for lay in layers]
        v = [x for x in v if x is not None]
        qs.append(statistics.fmean(v) if v else None)
    name = Path(res["run"]).name
    m = NAME.match(name)
    return {
        "run": name, "group": m["group"] if m else name, "seed": res["seed"],
        "h_loss_tr": res["train"]["mean"].get("heads_loss"), "h_loss_ho": res["heldout"]["mean"].get("heads_loss"),
        "c_ent_tr": res["train"]["mean"].get("complexity_entropy"),
        "c_ent_ho": res["heldout"]["mean"].get("complexity_entropy"),
        "c_loss_tr": res["train"]["mean"].get("complexity_loss"),
        "rm": qs, "rm_margin": res["intervention"]["remove_q4_minus_q1_mean"],
        "add_margin": res["intervention"]["add_q4_minus_q1_mean"],
        "lm_pre": criterion(rep, "loss", "pretrain"), "lm_ins": criterion(rep, "loss", "instruct"),
        "eval_ins": res["summary"]["eval_loss"].get("instruct"),
        "heads": criterion(rep, "average_heads", "pretrain"),
        "verdict": rep["verdict"],
        "warnings": sorted({f["code"] for f in rep["findings"] if f["severity"] in ("warning", "error")}),
        "wall_s": res["summary"]["wall_s"],
    }


def _f(x, fmt="+.3f") -> str:
    return "—" if x is None else format(x, fmt)


def _ms(xs: list, fmt="+.3f") -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    if len(xs) == 1:
        return format(xs[0], fmt)
    return f"{format(statistics.fmean(xs), fmt)} ± {format(statistics.stdev(xs), fmt.lstrip('+'))}"


RUN_HEAD = ("run", "seed", "ρ(h,loss) tr / ho", "ρ(c,ent) tr / ho", "ρ(c,loss) tr", "remove ΔL Q1 Q2 Q3 Q4",
            "Q4−Q1", "lm pre / ins", "heads", "verdict, warnings", "wall s")
GROUP_HEAD = ("objective_corpus", "seeds", "ρ(h,loss) tr", "ρ(h,loss) ho", "ρ(c,ent) tr", "ρ(c,ent) ho",
              "remove Q4−Q1", "add Q4−Q1", "lm pre", "lm ins", "heads", "wall s")


def run_line(r: dict) -> list[str]:
    return [r["run"], str(r["seed"]), f"{_f(r['h_loss_tr'])} / {_f(r['h_loss_ho'])}",
            f"{_f(r['c_ent_tr'])} / {_f(r['c_ent_ho'])}", _f(r["c_loss_tr"]),
            " ".join(_f(q, "+.4f") for q in r["rm"]), _f(r["rm_margin"], "+.4f"),
            f"{_f(r['lm_pre'], '.4f')} / {_f(r['lm_ins'], '.4f')}", _f(r["heads"], ".2f"),
            r["verdict"] + (", " + " ".join(r["warnings"]) if r["warnings"] else ""), _f(r["wall_s"], ".0f")]


def group_lines(rows: list[dict]) -> list[list[str]]:
    out = []
    for g in dict.fromkeys(r["group"] for r in rows):
        rs = [r for r in rows if r["group"] == g]
        out.append([g, str(len(rs))] + [_ms([r[k] for r in rs], f) for k, f in (
            ("h_loss_tr", "+.3f"), ("h_loss_ho", "+.3f"), ("c_ent_tr", "+.3f"), ("c_ent_ho", "+.3f"),
            ("rm_margin", "+.4f"), ("add_margin", "+.4f"), ("lm_pre", ".4f"), ("lm_ins", ".4f"),
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
