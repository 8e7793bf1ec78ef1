"""The narrow layout of `moh report` / `moh compare` (a terminal of 80 columns or fewer, or a pipe).

A wide table at 80 columns cuts values (`Δthreshold_me…`) and splits codes mid-word; here every
criterion and finding is a short block of lines wrapped only at spaces, so no value, code or
number is ever cut (a single word longer than the width stays whole), and the verdict is one
line of its own that fits in 80 columns (`moh report X | grep PASS` finds it).
"""

from __future__ import annotations

import textwrap

from analyze.report import Report, _criteria_line, _metrics_title, _run_line, metric_headers, metric_rows, printable, table_rows

WIDTH = 80
INDENT = "      "


def _wrap(text: str, width: int, first: str = "", rest: str = INDENT) -> list[str]:
    return textwrap.wrap(printable(text), width=width, initial_indent=first, subsequent_indent=rest,
                         break_long_words=False, break_on_hyphens=False) or [first.rstrip()]


def verdict_line(rep: Report) -> str:
    """The verdict in under 80 columns: the same counts as the wide table's verdict line."""
    c, f = rep.counts, rep.finding_counts
    return (f"{rep.verdict.upper()}: {c['pass']} passed, {c['fail']} failed, {c['warn']} warned, "
            f"{c['missing']} n/a; findings {f['error']} error, {f['warning']} warning, {f['info']} info")


def report_text(rep: Report, width: int = WIDTH) -> str:
    lines = _wrap(f"moh report {rep.run.name}", width, rest="  ") + _wrap(str(rep.run.path), width, "  ", "  ")
    lines += _wrap(_run_line(rep), width, "  ", "  ")
    if _criteria_line(rep):
        lines += _wrap(_criteria_line(rep), width, "  ", "  ")
    lines += ["", "Expected vs actual"]
    for row in table_rows(rep.results):
        crit = row.criterion + (f" ({row.phase})" if row.phase else "")
        where = f" [layer {row.layer}]" if row.layer else ""
        detail = f" {row.detail}" if row.detail else ""
        lines += _wrap(f"{row.status:<5} {crit}{where}: {row.actual} (target {row.target}){detail}", width)
    lines += ["", "Findings" + ("" if rep.findings else ": none")]
    for f in rep.findings:
        where = "" if f.layer is None else f" layer {f.layer}"
        lines += _wrap(f"{f.severity} {f.code}{where}: {f.message}", width, rest=INDENT)
        if f.action:
            lines += _wrap(f"action: {f.action}", width, INDENT)
    rows = metric_rows(rep)
    if rows:  # one line per layer: "name value" pairs, so no column can be cut
        lines += [""] + _wrap(_metrics_title(rep), width, rest="  ")
        for cells in rows:
            pairs = ", ".join(f"{h} {c}" for h, c in zip(metric_headers(rep)[1:], cells[1:]))
            lines += _wrap(f"layer {cells[0]}: {pairs}", width, "  ", INDENT)
    lines += ["", verdict_line(rep)]
    return "\n".join(lines) + "\n"


def compare_text(cmp, width: int = WIDTH) -> str:
    from analyze.compare import _delta_text

    names = [rep.run.name for rep in cmp.reports]
    lines = _wrap("moh compare " + " vs ".join(names), width, rest="  ")
    for i, rep in enumerate(cmp.reports):
        lines += _wrap(f"run {i + 1}: {rep.run.name}", width, "  ", "    ")
        if _criteria_line(rep):
            lines += _wrap(_criteria_line(rep), width, "    ", "    ")

    def block(row, status: bool) -> list[str]:
        out = _wrap(row.title + (f" (target {row.target})" if row.target else ""), width, rest="    ")
        for i, (c, d) in enumerate(zip(row.cells, row.deltas())):
            delta = f" ({_delta_text(d)})" if i and _delta_text(d) else ""
            st = f" {c.status}" if status and c.status else ""
            out += _wrap(f"run {i + 1}: {c.text}{delta}{st}", width, "    ", INDENT)
        return out

    lines += ["", "Criteria (Δ against run 1)"]
    for row in cmp.criteria:
        lines += block(row, True)
    lines += ["", "Key final metrics"]
    for row in cmp.metrics:
        lines += block(row, False)
    if cmp.findings:
        lines += ["", "Findings (count per run)"]
        for code, sev, counts in cmp.findings:
            lines += _wrap(f"{sev} {code}: " + ", ".join(f"run {i + 1} {n}" for i, n in enumerate(counts)), width)
    verdicts = ", ".join(f"run {i + 1} {rep.verdict}" for i, rep in enumerate(cmp.reports))
    lines += ["", f"{cmp.verdict.upper()}: {verdicts}"]
    return "\n".join(lines) + "\n"
