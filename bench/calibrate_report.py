"""The reporting half of bench/calibrate.py (torch-free): report every run, table the margins.

For each run: `moh report`'s verdict, criteria and findings (analyze.report.build_report), and
every rule's statistics against their thresholds (analyze.findings.measure_all). Printed:
1. one line per run: verdict, failed criteria, warning/error findings;
2. one row per rule statistic: threshold, the range of values over the healthy runs of each
   router, the smallest healthy margin (and its run), and the broken runs that cross it;
3. with --full, every (rule statistic, run) pair: the run's worst layer/phase value and margin.
Margin = distance from the threshold to the value on the safe side, in units of |threshold|
(analyze.rules.margins.Margin.margin): > 0 clear of the rule, < 0 crossed.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from pathlib import Path

from analyze.findings import measure_all
from analyze.loader import load_run
from analyze.report import build_report

def _num(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.3g}"


def _cell(text: str) -> str:
    """Text inside a Markdown table cell: a literal | (|mean - target|) must not split the cell."""
    return text.replace("|", "\\|")


def report_run(path: Path) -> dict:
    run = load_run(path)
    rep = build_report(run)
    _, margins = measure_all(run)
    bad = [f for f in rep.findings if f.severity in ("warning", "error")]
    return {
        "verdict": rep.verdict,
        "failed_criteria": sorted({r.name for r in rep.results if r.status == "fail"}),
        "findings": [f"{f.severity}:{f.code}" + (f"@L{f.layer}" if f.layer is not None else "") for f in bad],
        "codes": sorted({f.code for f in bad}),
        "margins": [m.to_dict() for m in margins],
    }


def _judged(m: dict) -> bool:
    """A margin the rule could compute (NaN: a non-finite value or threshold, nothing to table)."""
    return not (m["margin"] is None or (isinstance(m["margin"], float) and math.isnan(m["margin"])))


def _worst_per_stat(margins: list[dict]) -> dict[tuple[str, str], dict]:
    """The run's least-clear value per (code, statistic) over its layers and phases."""
    out: dict[tuple[str, str], dict] = {}
    for m in margins:
        key = (m["code"], m["statistic"])
        if not _judged(m):
            continue
        if key not in out or m["margin"] < out[key]["margin"]:
            out[key] = m
    return out


def rule_clearance(margins: list[dict]) -> dict[str, tuple[float, bool]]:
    """Per rule: (how clear the run is of it, whether its thresholds were crossed). Over each
    (layer, phase) the rule judged, joint conditions (all must cross to fire) count by their
    largest margin, single conditions (any one fires) by their smallest; then the smallest over
    layers and phases."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for m in margins:
        if not _judged(m):
            continue
        groups[(m["code"], m["layer"], m["phase"])].append(m)
    out: dict[str, tuple[float, bool]] = {}
    for (code, _, _), ms in groups.items():
        joint = [m for m in ms if m.get("joint")]
        single = [m for m in ms if not m.get("joint")]
        parts = []
        if joint:
            parts.append((max(m["margin"] for m in joint), all(m["crossed"] for m in joint)))
        parts += [(m["margin"], m["crossed"]) for m in single]
        clear, crossed = min(p[0] for p in parts), any(p[1] for p in parts)
        prev = out.get(code, (math.inf, False))
        out[code] = (min(prev[0], clear), prev[1] or crossed)
    return out


def build_tables(results: dict, members: dict) -> dict:
    """results: name -> report_run dict; members: name -> (router, corpus, broken label)."""
    stats: dict[tuple[str, str], dict] = {}
    for name, res in results.items():
        router, _, broken = members[name]
        for key, m in _worst_per_stat(res["margins"]).items():
            row = stats.setdefault(key, {"code": key[0], "statistic": key[1], "threshold": m["threshold"],
                                         "fires": m["fires"], "healthy": defaultdict(list),
                                         "worst_healthy": None, "broken_crossing": [], "per_run": {}})
            row["per_run"][name] = {"value": m["value"], "margin": m["margin"], "layer": m["layer"],
                                    "phase": m["phase"], "crossed": m["crossed"]}
            if broken:
                if m["crossed"]:
                    row["broken_crossing"].append(f"{broken} ({_num(m['value'])})")
                continue
            row["healthy"][router].append(m["value"])
            if row["worst_healthy"] is None or m["margin"] < row["worst_healthy"][1]:
                row["worst_healthy"] = (name, m["margin"], m["value"])
    return stats


def render(results: dict, members: dict, full: bool = False) -> str:
    lines = ["## Runs", "", "| run | router | corpus | verdict | failed criteria | warning/error findings |",
             "|---|---|---|---|---|---|"]
    for name, res in results.items():
        router, corpus, _ = members[name]
        lines.append(f"| {name} | {router} | {corpus} | {res['verdict']} | "
                     f"{', '.join(res['failed_criteria']) or '—'} | {', '.join(res['findings']) or '—'} |")
    stats = build_tables(results, members)
    lines += ["", "## Rule statistics: healthy range per router, smallest healthy margin, broken runs that cross", "",
              "| rule | statistic | fires when | healthy adaptive | healthy moh | healthy dense "
              "| smallest healthy margin (run) | broken runs crossing |", "|---|---|---|---|---|---|---|---|"]
    for (code, stat), row in sorted(stats.items()):
        def rng(router: str) -> str:
            v = [x for x in row["healthy"].get(router, []) if x is not None and math.isfinite(x)]
            return "n/a" if not v else (_num(min(v)) if _num(min(v)) == _num(max(v)) else f"{_num(min(v))} – {_num(max(v))}")
        worst = row["worst_healthy"]
        w = "—" if worst is None else f"{_num(worst[1])} ({worst[0]})"
        lines.append(f"| `{code}` | {_cell(stat)} | {row['fires']} {_num(row['threshold'])} | {rng('adaptive')} | "
                     f"{rng('moh')} | {rng('dense')} | {w} | {', '.join(row['broken_crossing']) or '—'} |")
    lines += ["", "## Rules as a whole: clearance on healthy runs, firing on broken runs", "",
              "| rule | healthy runs clear | smallest healthy clearance (run) | broken runs it fires on |",
              "|---|---|---|---|"]
    codes = sorted({code for code, _ in stats})
    for code in codes:
        healthy = [(name, rule_clearance(res["margins"]).get(code)) for name, res in results.items()
                   if not members[name][2]]
        healthy = [(n, c) for n, c in healthy if c is not None and math.isfinite(c[0])]
        n_clear = sum(1 for _, c in healthy if not c[1])
        worst = min(((n, c[0]) for n, c in healthy), key=lambda x: x[1]) if healthy else None
        fires = [members[n][2] for n, res in results.items() if members[n][2] and code in res["codes"]]
        lines.append(f"| `{code}` | {n_clear}/{len(healthy)} | "
                     f"{'—' if worst is None else f'{_num(worst[1])} ({worst[0]})'} | {', '.join(fires) or '—'} |")
    if full:
        lines += ["", "## Every rule statistic on every run (worst layer/phase)", "",
                  "| rule | statistic | threshold | run | layer | phase | value | margin |", "|---|---|---|---|---|---|---|---|"]
        for (code, stat), row in sorted(stats.items()):
            for name, v in row["per_run"].items():
                lines.append(f"| `{code}` | {_cell(stat)} | {row['fires']} {_num(row['threshold'])} | {name} | "
                             f"{'' if v['layer'] is None else v['layer']} | {v['phase'] or ''} | "
                             f"{_num(v['value'])} | {_num(v['margin'])} |")
    return "\n".join(lines) + "\n"


DOCS_BEGIN = "<!-- calibrate:begin (bench/calibrate.py --write-docs replaces this part) -->"
DOCS_END = "<!-- calibrate:end -->"


def write_docs(path: Path, text: str) -> None:
    """Replace the text between the calibrate markers of `path` (docs/findings.md)."""
    doc = path.read_text(encoding="utf-8")
    a, b = doc.index(DOCS_BEGIN) + len(DOCS_BEGIN), doc.index(DOCS_END)
    path.write_text(doc[:a] + "\n" + text + doc[b:], encoding="utf-8")


def _members_table(runs: dict) -> str:
    lines = ["| run | `moh train` flags |", "|---|---|"]
    for m in runs:
        lines.append(f"| {m.name} | `{m.command}` |")
    return "\n".join(lines) + "\n"


def report_population(runs: dict, *, full: bool = False, json_out: Path | None = None,
                      docs: Path | None = None) -> int:
    """runs: Member -> run.jsonl path. Prints the tables; exit 1 when a healthy run is not clean
    (verdict fail or any warning/error finding: every rule is judged) or a broken run misses
    every one of its expected codes."""
    from calibrate import BROKEN  # noqa: E402  (sibling module: same directory on sys.path)

    results, members = {}, {}
    for m, path in runs.items():
        results[m.name] = report_run(path)
        members[m.name] = (m.router, m.corpus, m.broken)
    text = render(results, members, full=full)
    print(text)
    problems = []
    for name, res in results.items():
        broken = members[name][2]
        if broken:
            want = BROKEN[broken][1]
            if not set(want) & set(res["codes"]):
                problems.append(f"broken run {name} triggers none of {', '.join(want)} (got {', '.join(res['codes']) or 'none'})")
        elif res["verdict"] != "pass" or res["codes"]:
            problems.append(f"healthy run {name}: verdict {res['verdict']}, findings {', '.join(res['codes']) or 'none'}")
    for p in problems:
        print(f"calibrate: {p}")
    if docs is not None:
        load = os.getloadavg()
        stamp = (f"Reported {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from {len(runs)} cached runs "
                 f"(load average {load[0]:.1f} while reporting); "
                 + ("every healthy run clean, every broken run caught." if not problems else
                    "problems: " + "; ".join(problems)))
        write_docs(docs, stamp + "\n\n### Population\n\n" + _members_table(runs) + "\n" +
                   text.replace("## ", "### "))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        stats = build_tables(results, members)
        # per run, each rule statistic at its worst layer/phase (every layer and phase: --full)
        slim = {name: {**{k: v for k, v in res.items() if k != "margins"},
                       "margins": list(_worst_per_stat(res["margins"]).values())}
                for name, res in results.items()}
        doc = {"runs": slim, "members": members,
               "statistics": [{**{k: v for k, v in row.items() if k not in ("healthy", "per_run")},
                               "healthy": dict(row["healthy"])} for row in stats.values()],
               "problems": problems}
        json_out.write_text(json.dumps(doc, separators=(",", ":"), default=str) + "\n")
    return 1 if problems else 0
