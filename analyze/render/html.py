"""`moh report --format html` and `moh compare --format html`: one self-contained page.

Everything is inline: the style sheet, and the figures as SVG (text kept as text, so the page
is searchable). No script, no network: the page loads nothing and runs nothing, and it carries
no external URL (matplotlib's metadata block and namespace attributes are removed from the SVG).

Every string that comes from a log (run names, paths, config values, eval prompts and outputs,
finding messages, notes) goes through `esc`: HTML special characters become entities and
control characters are shown as escapes, so `<script>` or `onerror=` in a log is shown as text.
"""

from __future__ import annotations

import html
import re
from typing import Any, Iterable

from analyze.plots import FAMILIES
from analyze.report import (Report, _criteria_line, _metrics_title, _run_line, _verdict_line, format_value,
                             metric_headers, metric_rows, printable, table_rows)
from .svg import figure_of, figure_svg

SAMPLES_SHOWN = 12   # eval samples listed (the last ones: the trained model's answers)

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;color:#222}
h1{font-size:1.4em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
.path{color:#666;font-size:.9em;word-break:break-all}
.verdict{font-size:1.15em;font-weight:bold;padding:.5em .8em;border-radius:4px}
.verdict.pass{background:#e6f4ea;color:#0b6b2b} .verdict.fail{background:#fce8e6;color:#a50e0e}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f5f5f5} td.num{text-align:right;font-variant-numeric:tabular-nums}
.status-pass{color:#0b6b2b;font-weight:bold} .status-fail{color:#a50e0e;font-weight:bold}
.status-warn{color:#8a6d00;font-weight:bold} .status-missing,.status-n\\/a{color:#777}
.figure{display:grid;grid-template-columns:minmax(0,3fr) minmax(0,2fr);gap:1em;align-items:start;margin:1em 0}
.figure svg{width:100%;height:auto} .findings{list-style:none;padding:0;margin:0}
.finding{border-left:4px solid #999;padding:.3em .6em;margin-bottom:.6em;background:#fafafa}
.finding.error{border-color:#d93025} .finding.warning{border-color:#f9ab00} .finding.info{border-color:#1a73e8}
.code{font-family:ui-monospace,monospace;font-weight:bold} .action,.evidence{color:#555;font-size:.92em}
.none{color:#0b6b2b} pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:.9em}
.differs{background:#fff4d6}
"""


def esc(value: Any) -> str:
    """A log string as HTML text: entities for <>&"' and escapes for control characters."""
    return html.escape(printable("" if value is None else value), quote=True)


def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{esc(title)}</title>\n<style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _table(header: Iterable[str], rows: Iterable[Iterable[str]], cls: str = "") -> str:
    """A table of already-escaped cells (`_cell` / `esc` output)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table class=\"{cls}\"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _status(status: str | None) -> str:
    s = status or ""
    return f"<td class=\"status-{esc(s)}\">{esc(s)}</td>"


def _verdict(verdict: str, text: str) -> str:
    cls = "pass" if verdict == "pass" else "fail"
    return f"<p id=\"verdict\" class=\"verdict {cls}\">{esc(text)}</p>"


def _finding_item(f, run_name: str | None = None) -> str:
    where = "" if f.layer is None else f" · layer {esc(f.layer)}"
    who = "" if run_name is None else f"{esc(run_name)}: "
    steps = f.evidence.get("steps") or []
    ev = (f"<div class=\"evidence\">evidence at steps {esc(', '.join(map(str, steps)))}"
          + (f" (of {esc(f.evidence['n_steps'])})" if "n_steps" in f.evidence else "")
          + " — dotted lines on its layer's panel</div>") if steps else ""
    action = f"<div class=\"action\">{esc(f.action)}</div>" if f.action else ""
    return (f"<li class=\"finding {esc(f.severity)}\" data-code=\"{esc(f.code)}\">{who}"
            f"<span class=\"code\">{esc(f.code)}</span> ({esc(f.severity)}{where})"
            f"<div class=\"message\">{esc(f.message)}</div>{ev}{action}</li>")


def _figures(runs: list, findings: list[tuple[Any, Any]]) -> list[str]:
    """One section per figure family, its findings (with their runs) beside it, marked on it;
    findings with no figure after. Run names are shown when there are several runs."""
    by_family: dict[str | None, list] = {}
    for f, run in findings:
        by_family.setdefault(figure_of(f), []).append((f, run))
    out, unplaced = ["<h2>Findings and figures</h2>"], list(by_family.get(None, []))

    def item(f, run) -> str:
        return _finding_item(f, run.name if len(runs) > 1 else None)

    for family in FAMILIES:
        mine = by_family.get(family, [])
        svg, _ = figure_svg(runs, family, mine)
        if svg is None:
            unplaced += mine
            continue
        items = "".join(item(f, run) for f, run in mine) or \
            "<li class=\"none\">No finding about this figure.</li>"
        out.append(f"<section class=\"figure\" id=\"fig-{family}\"><div>{_clean_svg(svg)}</div>"
                   f"<ul class=\"findings\">{items}</ul></section>")
    if unplaced:
        out.append("<h3>Findings without a figure</h3><ul class=\"findings\">"
                   + "".join(item(f, run) for f, run in unplaced) + "</ul>")
    if not findings:
        out.insert(1, "<p class=\"none\">Findings: none.</p>")
    return out


_SVG_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
_SVG_NAMESPACES = re.compile(r'\s+xmlns(:xlink)?="[^"]*"')


def _clean_svg(svg: str) -> str:
    """Inline SVG without URLs: HTML parsers know the svg and xlink namespaces without them."""
    return _SVG_NAMESPACES.sub("", _SVG_METADATA.sub("", svg))


def _criteria_table(rep: Report) -> str:
    rows = []
    for r in table_rows(rep.results):
        crit = r.criterion + (f" ({r.phase})" if r.phase else "")
        rows.append([esc(crit), f"<td class=\"num\">{esc(r.layer)}</td>", esc(r.target),
                     f"<td class=\"num\">{esc(r.actual)}</td>", _status(r.status), esc(r.detail)])
    return _table(["Criterion", "Layer", "Target", "Actual", "Status", "Notes"], rows, "criteria")


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _config(meta: dict) -> dict[str, Any]:
    keys = ("config", "model", "data", "semantics")
    return _flat({k: meta[k] for k in keys if isinstance(meta.get(k), dict)})


def _data_summary(rep: Report) -> dict[str, Any]:
    run, info = rep.run, rep.run_info()
    return {"logged steps": info["logged_steps"], "last step": info["last_step"],
            "phases": ", ".join(info["phases"]), "status": info["status"] or "no run_end (killed or running)",
            "wall time (s)": info["wall_s"], "layer rows": len(run.layers), "head-load rows": len(run.head_load),
            "eval records": len(run.evals), "eval samples": len(run.samples), "alerts": len(run.alerts),
            "resumes": len(run.resumes), "source": info["source"]}


def _kv_table(d: dict[str, Any]) -> str:
    return _table(["Key", "Value"], ([esc(k), esc(format_value(v) if isinstance(v, float) else v)]
                                     for k, v in d.items()), "kv")


def _samples(rep: Report) -> list[str]:
    s = rep.run.samples
    if not len(s):
        return []
    cols = [c for c in ("step", "phase", "prompt", "expected", "output", "match") if c in s.columns]
    tail = s.tail(SAMPLES_SHOWN)
    rows = ([f"<td><pre>{esc(v)}</pre></td>" for v in row] for row in tail[cols].itertuples(index=False))
    return [f"<h2>Eval samples (last {len(tail)} of {len(s)})</h2>", _table(cols, rows, "samples")]


def _notes(notes: list[str]) -> list[str]:
    if not notes:
        return []
    return ["<h2>Loader notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>"]


def report_html(rep: Report) -> str:
    """The page of one run's report."""
    body = [f"<h1>moh report: {esc(rep.run.name)}</h1>",
            f"<div class=\"path\">{esc(rep.run.path)}</div>", f"<p>{esc(_run_line(rep))}</p>",
            f"<p class=\"path\">{esc(_criteria_line(rep))}</p>",
            _verdict(rep.verdict, _verdict_line(rep)), "<h2>Expected vs actual</h2>", _criteria_table(rep)]
    if metric_rows(rep):
        body += [f"<h2>{esc(_metrics_title(rep))}</h2>",
                 _table(metric_headers(rep), ([f"<td class=\"num\">{esc(c)}</td>" for c in cells]
                                          for cells in metric_rows(rep)), "metrics")]
    if rep.baseline:
        body.append(f"<p>Judged against the baseline run <span class=\"path\">{esc(rep.baseline)}</span>.</p>")
    body += _figures([rep.run], [(f, rep.run) for f in rep.findings])
    body += ["<h2>Run configuration</h2>", _kv_table(_config(rep.run.meta)),
             "<h2>Data summary</h2>", _kv_table(_data_summary(rep))]
    body += _samples(rep) + _notes(list(rep.run.notes))
    return _page(f"moh report: {rep.run.name}", body)


def compare_html(cmp) -> str:
    """The page of `moh compare`: runs as columns, the figures overlaid, configs side by side."""
    from analyze.compare import _delta_text

    names = [rep.run.name for rep in cmp.reports]
    body = ["<h1>moh compare: " + " vs ".join(esc(n) for n in names) + "</h1>",
            "<ul>" + "".join(f"<li>{esc(rep.run.name)}: <span class=\"path\">{esc(rep.run.path)}</span>, "
                             f"verdict <b>{esc(rep.verdict)}</b><br><span class=\"path\">{esc(_criteria_line(rep))}</span></li>"
                             for rep in cmp.reports) + "</ul>",
            _verdict(cmp.verdict, f"{cmp.verdict.upper()}: "
                     + ", ".join(f"{rep.run.name}: {rep.verdict}" for rep in cmp.reports))]

    def cells(row, status: bool) -> list[str]:
        out = []
        for i, (c, d) in enumerate(zip(row.cells, row.deltas())):
            delta = f" ({_delta_text(d)})" if i and _delta_text(d) else ""
            st = f" <span class=\"status-{esc(c.status)}\">{esc(c.status)}</span>" if status and c.status else ""
            out.append(f"<td class=\"num\">{esc(c.text + delta)}{st}</td>")
        return out

    body += ["<h2>Criteria (Δ against the first run)</h2>",
             _table(["Criterion", "Target", *names],
                    ([esc(r.title), esc(r.target), *cells(r, True)]
                     for r in cmp.criteria), "criteria"),
             "<h2>Key final metrics</h2>",
             _table(["Metric", *names], ([esc(r.title), *cells(r, False)] for r in cmp.metrics), "metrics")]
    if cmp.findings:
        body += ["<h2>Findings (count per run)</h2>",
                 _table(["Code", "Severity", *names],
                        ([f"<span class=\"code\">{esc(code)}</span>", esc(sev),
                          *[f"<td class=\"num\">{n}</td>" for n in counts]] for code, sev, counts in cmp.findings),
                        "finding-counts")]
    body += _figures([rep.run for rep in cmp.reports],
                     [(f, rep.run) for rep in cmp.reports for f in rep.findings])
    configs = [_config(rep.run.meta) for rep in cmp.reports]
    keys = list(dict.fromkeys(k for c in configs for k in c))
    rows = []
    for k in keys:
        vals = [c.get(k) for c in configs]
        cls = " class=\"differs\"" if len({repr(v) for v in vals}) > 1 else ""
        rows.append([esc(k), *[f"<td{cls}>{esc(v)}</td>" for v in vals]])
    body += ["<h2>Run configuration (differences highlighted)</h2>", _table(["Key", *names], rows, "kv")]
    for rep in cmp.reports:
        body += _notes([f"{rep.run.name}: {n}" for n in rep.run.notes])
    return _page("moh compare: " + " vs ".join(names), body)
