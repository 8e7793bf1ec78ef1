"""The report: criteria results and findings for one run, and one renderer per output format.

`build_report(run, criteria)` evaluates everything once; `render_table` (rich, for a terminal),
`render_md` (for docs) and `render_json` (one document for machines) only present it. Strings that
come from the log (phase names, layer labels, messages, paths) are never interpreted: rich markup
is not parsed in them, and Markdown/HTML special characters are escaped.

Verdict: "fail" when any criterion fails or any finding has severity "error"; otherwise "pass".
A `missing` criterion (not logged, or not applicable to a dense baseline) does not fail the
verdict, and is shown as such.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
from rich.console import Group
from rich.table import Table
from rich.text import Text

from .baseline import compare as compare_with_baseline
from .criteria import Criterion, Result, criteria_for, criteria_set, evaluate, verdict
from .findings import Finding, find_all
from .formats import FORMATS, render_as, to_json
from .jsonsafe import json_safe
from .metrics import routing_metrics
from .rules.registry import sort_findings
from .rules.units import reword
from .run import Run

__all__ = ["Report", "build_report", "render", "render_table", "render_md", "render_json", "FORMATS",
           "format_value", "md_escape", "json_safe", "printable", "SafeText"]

_STATUS_STYLE = {"pass": "bold green", "fail": "bold red", "warn": "bold yellow", "missing": "dim", "n/a": "dim"}
_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
_STATUS_RANK = {"fail": 0, "warn": 1, "missing": 2, "pass": 3}


# Control characters (ESC starts terminal escape sequences, CR overwrites a line) and Unicode
# direction overrides (which reorder what a reader sees): shown as \xNN / \uNNNN, never sent raw.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _control_escape(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(text: Any) -> str:
    """`text` with control characters and direction overrides shown as escapes (\x1b, \u202e)."""
    return _CONTROL.sub(_control_escape, str(text))


class SafeText(Text):
    """A rich Text for strings from logs: never parsed as markup, control characters escaped."""

    def __init__(self, text: Any = "", *args, **kwargs):
        super().__init__(printable(text), *args, **kwargs)

    def append(self, text, style=None):
        return super().append(printable(text) if isinstance(text, str) else text, style)


@dataclass(frozen=True)
class Report:
    run: Run
    results: list[Result]
    findings: list[Finding]
    verdict: str
    metrics: dict | None = None   # routing metrics per layer (analyze/metrics.py), no verdict
    baseline: str | None = None   # the reference run's path when judged --baseline (analyze/baseline.py)
    criteria_set: dict | None = None   # which criteria judged the run and why (criteria.criteria_set)
    specs: tuple = ()             # the Criterion definitions judged (targets for the JSON document)

    @property
    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in ("pass", "fail", "warn", "missing")}
        for r in self.results:
            out[r.status] += 1
        return out

    @property
    def finding_counts(self) -> dict[str, int]:
        out = {"error": 0, "warning": 0, "info": 0}
        for f in self.findings:
            out[f.severity] = out.get(f.severity, 0) + 1
        return out

    def run_info(self) -> dict:
        run = self.run
        steps = run.steps
        end = run.end or {}
        phases = [str(p) for p in steps["phase"].cat.categories] if "phase" in steps else []
        return {
            "name": run.name, "path": str(run.path), "router": run.router,
            "source": run.meta.get("source"), "run_id": run.meta.get("run_id"),
            "n_layers": (run.meta.get("model") or {}).get("n_layers"), "n_heads": run.n_heads,
            "logged_steps": int(len(steps)),
            "last_step": int(steps["step"].iloc[-1]) if len(steps) else None,
            "phases": phases, "status": end.get("status"), "wall_s": end.get("wall_s"),
            "semantics": run.semantics,
        }

    def to_dict(self) -> dict:
        """The documented JSON document (docs/report-json.md)."""
        from .render.json_doc import report_doc

        return report_doc(self)


def build_report(run: Run, criteria: list[Criterion] | None = None, baseline: Run | None = None,
                 criteria_file: str | None = None) -> Report:
    """`baseline`: a known-good reference run; adds its `baseline_deviation` findings.
    `criteria_file`: where `criteria` came from (None: the defaults), named in the header."""
    criteria = criteria_for(run, criteria_file) if criteria is None else criteria
    results = evaluate(run, criteria)
    findings = find_all(run)
    if baseline is not None:
        findings = sort_findings(findings + compare_with_baseline(run, baseline))
    return Report(run=run, results=results, findings=findings, verdict=verdict(results, findings),
                  metrics=routing_metrics(run), baseline=None if baseline is None else str(baseline.path),
                  criteria_set=criteria_set(run, criteria, criteria_file), specs=tuple(criteria))


# ---- value formatting ------------------------------------------------------------------------


def _num(x: Any) -> str:
    if x is None:
        return "—"
    x = float(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.4g}"


def format_value(v: Any) -> str:
    """A criterion value as short text: 0.1234, [0.3, 0.79], 13/13, Δthreshold_mean 0.05 ..."""
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if isinstance(v, dict):
        return ", ".join(f"Δ{k} {_num(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_num(x) for x in v) + "]"
    return _num(v)


def _group_value(values: list[Any]) -> str:
    """Several layers' values as one cell: a range of numbers, or the worst of each part."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    if all(isinstance(v, (int, float, np.floating)) for v in vals):
        lo, hi = min(vals), max(vals)
        return _num(lo) if _num(lo) == _num(hi) else f"{_num(lo)}–{_num(hi)}"
    if all(isinstance(v, (list, tuple)) and len(v) == 2 for v in vals):
        return format_value([min(v[0] for v in vals), max(v[1] for v in vals)])
    if all(isinstance(v, dict) for v in vals):
        keys = list(vals[0])
        mins = {k: min((v.get(k) for v in vals if v.get(k) is not None), default=None) for k in keys}
        return "min " + format_value(mins)
    uniq = list(dict.fromkeys(format_value(v) for v in vals))
    return uniq[0] if len(uniq) == 1 else ", ".join(uniq)


def _layer_text(layers: list[int | None]) -> str:
    ls = [x for x in layers if x is not None]
    if not ls:
        return ""
    if len(ls) == 1:
        return str(ls[0])
    return f"all ({min(ls)}–{max(ls)})" if sorted(ls) == list(range(min(ls), max(ls) + 1)) else \
        "all (" + ", ".join(map(str, ls)) + ")"


def _status_text(r: Result) -> str:
    return "n/a" if not r.applicable else r.status


@dataclass(frozen=True)
class _Row:
    criterion: str
    phase: str | None
    layer: str
    target: str
    actual: str
    status: str
    detail: str


def table_rows(results: list[Result]) -> list[_Row]:
    """Display rows: a criterion's layers fold into one row when they all share a status."""
    groups: dict[tuple, list[Result]] = {}
    for r in results:
        groups.setdefault((r.name, r.phase), []).append(r)
    rows = []
    for (name, phase), rs in groups.items():
        statuses = {r.status for r in rs}
        details = list(dict.fromkeys(r.detail for r in rs if r.detail))
        if len(rs) > 1 and len(statuses) == 1 and len(details) <= 1:
            r0 = rs[0]
            # Say how many results the row stands for: the verdict line counts each of them.
            folded = f"(per layer: {len(rs)} rows)"
            rows.append(_Row(r0.label, phase, _layer_text([r.layer for r in rs]), r0.target,
                             _group_value([r.value for r in rs]), _status_text(r0),
                             f"{details[0]} {folded}" if details else folded))
        else:
            for r in sorted(rs, key=lambda r: (_STATUS_RANK[r.status], -1 if r.layer is None else r.layer)):
                rows.append(_Row(r.label, phase, "" if r.layer is None else str(r.layer), r.target,
                                 format_value(r.value), _status_text(r), r.detail))
    return rows


def _verdict_line(rep: Report) -> str:
    c, f = rep.counts, rep.finding_counts
    return (f"{rep.verdict.upper()}: {c['pass']} passed, {c['fail']} failed, {c['warn']} warned, "
            f"{c['missing']} missing or n/a; findings: {f['error']} error, {f['warning']} warning, "
            f"{f['info']} info")


def _criteria_line(rep: Report) -> str:
    """Which criteria set was applied, and why (the run's router kind and log source)."""
    cs = rep.criteria_set
    if not cs:
        return ""
    name = f"{cs['router']} criteria" if cs["router"] else "generic criteria"
    src = (("generic default criteria" if rep.run.generic else "default criteria") if cs["file"] == "default"
           else f"criteria file {cs['file']}")
    parts = [f"Criteria: {name} ({cs['reason']}; {src})"]
    if cs["adjusted_for_router"]:
        parts.append(f"adjusted for this router: {', '.join(cs['adjusted_for_router'])}")
    if cs["not_applicable"]:
        parts.append(f"n/a here: {', '.join(cs['not_applicable'])}")
    return "; ".join(parts)


def _run_line(rep: Report) -> str:
    i = rep.run_info()
    parts = [f"router {i['router'] or 'unknown'}"]
    if i["n_layers"] is not None and i["n_heads"] is not None:
        parts.append(f"{i['n_layers']} layers x {i['n_heads']} {rep.run.unit}s")
    parts.append(f"{i['logged_steps']} logged steps" + (f" (last step {i['last_step']})" if i["last_step"] is not None else ""))
    if i["phases"]:
        parts.append("phases " + ", ".join(i["phases"]))
    parts.append(f"status {i['status'] or 'no run_end (killed or still running)'}")
    if i["source"] and i["source"] != "moh":
        parts.append(f"imported from {i['source']}")
    return "; ".join(parts)


_METRIC_HEADERS = ("Layer", "Load CV", "Max violation", "Dead heads", "Complexity~loss", "Heads~loss")


def metric_headers(rep: Report) -> tuple[str, ...]:
    """The routing-metrics column names in the run's unit ("Dead experts" on an expert log)."""
    return tuple(reword(h, rep.run.unit) for h in _METRIC_HEADERS)


def metric_rows(rep: Report) -> list[list[str]]:
    """One row of routing metrics per layer; "n/a" where a metric does not apply or was not logged."""
    m = rep.metrics or {}
    out = []
    for row in m.get("layers", []):
        cells = [str(row["layer"])]
        for k in ("load_cv", "max_violation", "dead_head_fraction", "complexity_loss_corr", "heads_loss_corr"):
            v = row.get(k)
            cells.append("n/a" if v is None else (f"{100 * v:.3g}%" if k == "dead_head_fraction" else _num(v)))
        out.append(cells)
    return out


def _metrics_title(rep: Report) -> str:
    m = rep.metrics or {}
    note = f"; {m['note']}" if m.get("note") else ""
    return f"Routing metrics ({m.get('window', '')}{note}; Spearman rank correlations with the token loss)"


# ---- table (rich) ----------------------------------------------------------------------------


def render_table(rep: Report) -> Group:
    """Expected-vs-actual table and findings as rich renderables (log strings shown literally)."""
    head = SafeText()
    head.append("moh report  ", style="bold")
    head.append(rep.run.name, style="bold")
    head.append(f"  {rep.run.path}\n", style="dim")
    head.append(_run_line(rep))
    if _criteria_line(rep):
        head.append("\n" + _criteria_line(rep), style="dim")

    t = Table(title="Expected vs actual", title_justify="left", show_lines=False, expand=False)
    for col, kw in (("Criterion", {}), ("Layer", {"justify": "right"}), ("Target", {}),
                    ("Actual", {"justify": "right"}), ("Status", {}), ("Notes", {"overflow": "fold"})):
        t.add_column(col, **kw)
    for row in table_rows(rep.results):
        crit = row.criterion + (f" ({row.phase})" if row.phase else "")
        t.add_row(SafeText(crit), SafeText(row.layer), SafeText(row.target), SafeText(row.actual),
                  SafeText(row.status, style=_STATUS_STYLE.get(row.status, "")), SafeText(row.detail, style="dim"))

    parts: list[Any] = [head, t]
    if rep.findings:
        ft = Table(title="Findings", title_justify="left", expand=False)
        for col in ("Severity", "Code", "Layer", "Finding", "Suggested action"):
            ft.add_column(col, overflow="fold")
        for f in rep.findings:
            ft.add_row(SafeText(f.severity, style=_SEVERITY_STYLE.get(f.severity, "")), SafeText(f.code),
                       SafeText("" if f.layer is None else str(f.layer)), SafeText(f.message), SafeText(f.action, style="dim"))
        parts.append(ft)
    else:
        parts.append(SafeText("Findings: none", style="green"))
    if metric_rows(rep):
        mt = Table(title=_metrics_title(rep), title_justify="left", expand=False)
        for col in metric_headers(rep):
            mt.add_column(col, justify="right")
        for cells in metric_rows(rep):
            mt.add_row(*(SafeText(c) for c in cells))
        parts.append(mt)
    parts.append(SafeText(_verdict_line(rep), style=_STATUS_STYLE["pass" if rep.verdict == "pass" else "fail"]))
    return Group(*parts)


# ---- Markdown --------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def md_escape(text: Any) -> str:
    """Text safe inside a Markdown table cell: no markup, no HTML, no line breaks."""
    s = printable(" ".join(str(text).split()))
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", s)


def _md_table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    out = ["| " + " | ".join(md_escape(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(md_escape(c) for c in r) + " |" for r in rows]
    return out


def render_md(rep: Report) -> str:
    lines = [f"# moh report: {md_escape(rep.run.name)}", "",
             f"Log: {md_escape(rep.run.path)}  ", md_escape(_run_line(rep)) + "  ",
             md_escape(_criteria_line(rep)), "",
             f"**Verdict: {md_escape(_verdict_line(rep))}**", "", "## Expected vs actual", ""]
    lines += _md_table(["Criterion", "Layer", "Target", "Actual", "Status", "Notes"],
                       ([r.criterion + (f" ({r.phase})" if r.phase else ""), r.layer, r.target, r.actual,
                         r.status, r.detail] for r in table_rows(rep.results)))
    lines += ["", "## Findings", ""]
    if rep.findings:
        lines += _md_table(["Severity", "Code", "Layer", "Finding", "Suggested action"],
                           ([f.severity, f.code, "" if f.layer is None else str(f.layer), f.message, f.action]
                            for f in rep.findings))
    else:
        lines.append("None.")
    if metric_rows(rep):
        lines += ["", "## " + md_escape(_metrics_title(rep)), ""]
        lines += _md_table(list(metric_headers(rep)), metric_rows(rep))
    return "\n".join(lines) + "\n"


# ---- JSON ------------------------------------------------------------------------------------


def render_json(rep: Report) -> str:
    return to_json(rep.to_dict())


def render(rep: Report, fmt: str) -> Group | str:
    """The renderer for `fmt` ("table" returns rich renderables; the others text)."""
    from .render.html import report_html  # imports this module

    return render_as(fmt, rep, {"table": render_table, "md": render_md, "json": render_json, "html": report_html})
