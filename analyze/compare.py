"""Compare runs side by side: criteria and key final metrics, with deltas against the first run.

The "before/after" view: `moh compare A B ...` puts each run in a column; a criterion that
is per layer is folded to one cell per run (worst status; the range of values across layers),
and numeric cells carry the delta to the first run (the baseline). Findings are listed by code
with how many each run has, so a fix that removes a finding shows as a drop to 0.
The verdict is "fail" when any run fails its own report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from rich.console import Group
from rich.table import Table
from rich.text import Text

from .report import (_STATUS_STYLE, SafeText, Report, _criteria_line, _group_value, _num, format_value, json_safe,
                     md_escape, _md_table)
from .formats import render_as, to_json
from .rules.units import reword
from .run import Run
from moh import schema

__all__ = ["Comparison", "build_comparison", "render", "render_table", "render_md", "render_json",
           "key_metrics"]

_WORST = ("fail", "warn", "pass", "missing")
_LAST_N = 50


@dataclass(frozen=True)
class Cell:
    status: str | None
    text: str
    number: float | None        # the value deltas are taken on (mean over layers), or None


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    phase: str | None
    target: str
    cells: list[Cell]
    meanings: tuple = ()        # per run: what the row's number means there (None: nothing to say)

    @property
    def comparable(self) -> bool:
        """False when the runs' numbers mean different things (a hard head count against a
        soft-weight sum, an LM loss against a total loss): no delta is taken then."""
        return len({m for m in self.meanings if m is not None}) <= 1

    @property
    def note(self) -> str:
        if self.comparable:
            return ""
        return "not comparable: " + " vs ".join(f"{m or 'unknown'}" for m in self.meanings)

    @property
    def title(self) -> str:
        """The row's label as every renderer shows it: phase, and why there is no delta."""
        return self.label + (f" ({self.phase})" if self.phase else "") + (f" [{self.note}]" if self.note else "")

    def deltas(self) -> list[float | None]:
        base = self.cells[0].number
        if not self.comparable:
            return [None for _ in self.cells]
        return [None if base is None or c.number is None else c.number - base for c in self.cells]


def meaning(run: Run, metric: str | None) -> str | None:
    """What a metric's numbers mean in `run`, where logs differ (schema semantics), else None."""
    if metric is None:
        return None
    sem = {**schema.DEFAULT_SEMANTICS, **run.semantics}
    if metric.startswith("heads"):
        return f"heads as {sem.get('heads')}"
    if metric.startswith("grad_norm"):
        return f"grad norm {sem.get('grad_norm')}" + (
            f" ({sem['grad_norm_reduction']})" if sem.get("grad_norm_reduction") not in (None, "per_step") else "")
    if metric in ("loss", "lm_loss", "final_loss"):
        lm = "lm_loss" in run.steps and bool(run.steps["lm_loss"].notna().any())
        used = metric if metric != "final_loss" else ("lm_loss" if lm else "loss")
        return "LM loss" if used == "lm_loss" else "total loss (LM + aux)"
    return None


@dataclass(frozen=True)
class Comparison:
    reports: list[Report]
    criteria: list[Row]
    metrics: list[Row]
    findings: list[tuple[str, str, list[int]]]   # (code, worst severity, count per run)

    @property
    def verdict(self) -> str:
        return "fail" if any(r.verdict == "fail" for r in self.reports) else "pass"

    def to_dict(self) -> dict:
        """The documented JSON document (docs/report-json.md)."""
        from .render.json_doc import compare_doc

        return compare_doc(self)


def _number(v: Any) -> float | None:
    if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
        return None  # a range: shown, no single delta
    return None


def _criteria_rows(reports: list[Report]) -> list[Row]:
    keys: dict[tuple, tuple[str, str]] = {}
    per_run: list[dict[tuple, list]] = []
    for rep in reports:
        d: dict[tuple, list] = {}
        for r in rep.results:
            k = (r.name, r.phase)
            keys.setdefault(k, (r.label, r.target))
            d.setdefault(k, []).append(r)
        per_run.append(d)
    phased = {name for name, phase in keys if phase is not None}
    # Rows in the criteria's own order (as `moh report` lists them), whichever run first had a
    # criterion's rows: a dense first run has no per-phase "Average heads" rows to set the order.
    name_rank: dict[str, int] = {}
    for rep in reports:
        for i, name in enumerate(dict.fromkeys(r.name for r in rep.results)):
            name_rank[name] = min(name_rank.get(name, i), i)
    rows = []
    for k, (label, target) in sorted(keys.items(), key=lambda kv: name_rank[kv[0][0]]):
        if k[1] is None and k[0] in phased:
            continue  # a run judged as a whole (e.g. n/a on a dense run) shows in the per-phase rows
        cells, metrics = [], []
        for d in per_run:
            rs = d.get(k) or d.get((k[0], None))
            if not rs:
                cells.append(Cell(None, "—", None))
                metrics.append(None)
                continue
            status = min((r.status for r in rs), key=_WORST.index)
            if not any(r.applicable for r in rs):
                status_text = "n/a"
            else:
                status_text = status
            nums = [_number(r.value) for r in rs]
            nums = [x for x in nums if x is not None]
            number = float(np.mean(nums)) if nums else None
            text = _group_value([r.value for r in rs]) if len(rs) > 1 else format_value(rs[0].value)
            cells.append(Cell(status_text, text, number))
            metrics.append(rs[0].metric)
        rows.append(Row(k[0], label, k[1], target, cells,
                        tuple(None if m is None else meaning(rep.run, m)
                              for rep, m in zip(reports, metrics))))
    return rows


# ---- key final metrics -------------------------------------------------------------------------


def _tail_mean(run: Run, col: str, frame: str = "steps") -> float | None:
    f = getattr(run, frame)
    if col not in f or not len(f):
        return None
    if frame == "layers":
        last_steps = np.sort(f["step"].unique())[-_LAST_N:]
        v = f.loc[f["step"].isin(last_steps), col].to_numpy(np.float64, na_value=np.nan)
    else:
        v = f[col].to_numpy(np.float64, na_value=np.nan)[-_LAST_N:]
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else None


def _loss(run: Run) -> float | None:
    for col in ("lm_loss", "loss"):
        x = _tail_mean(run, col)
        if x is not None:
            return x
    return None


def _grad_max(run: Run) -> float | None:
    if "grad_norm" not in run.steps or not len(run.steps):
        return None
    s = run.steps
    pieces = [s] if "phase" not in s else [s[s["phase"] == p] for p in s["phase"].cat.categories]
    best = None
    for piece in pieces:  # like the grad-norm criterion: each phase after its own first 10%
        v = piece["grad_norm"].to_numpy(np.float64, na_value=np.nan)
        v = v[int(len(v) * 0.1):]
        v = v[~np.isnan(v)]
        if len(v):
            best = float(v.max()) if best is None else max(best, float(v.max()))
    return best


def _exact(run: Run) -> float | None:
    ev = run.evals
    if "exact_match" not in ev or not len(ev):
        return None
    v = ev["exact_match"].to_numpy(np.float64, na_value=np.nan)
    return None if math.isnan(v[-1]) else float(v[-1])


def _end(key: str) -> Callable[[Run], float | None]:
    def get(run: Run) -> float | None:
        v = (run.end or {}).get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
    return get


def _median(col: str) -> Callable[[Run], float | None]:
    def get(run: Run) -> float | None:
        if col not in run.steps:
            return None
        v = run.steps[col].to_numpy(np.float64, na_value=np.nan)
        v = v[~np.isnan(v)]
        return float(np.median(v)) if len(v) else None
    return get


METRICS: list[tuple[str, str, Callable[[Run], float | None]]] = [
    ("logged_steps", "logged steps", lambda r: float(len(r.steps))),
    ("final_loss", f"final loss (mean of last {_LAST_N}; LM loss where logged)", _loss),
    ("exact_match", "final exact match", _exact),
    ("grad_norm_max", "max grad norm after warmup (10% of each phase)", _grad_max),
    ("heads_mean", f"heads per token (last {_LAST_N}, mean of layers)", lambda r: _tail_mean(r, "heads_mean", "layers")),
    ("threshold_mean", f"threshold (last {_LAST_N}, mean of layers)", lambda r: _tail_mean(r, "threshold_mean", "layers")),
    ("complexity_mean", f"complexity (last {_LAST_N}, mean of layers)", lambda r: _tail_mean(r, "complexity_mean", "layers")),
    ("entropy", f"router entropy (last {_LAST_N}, mean of layers)", lambda r: _tail_mean(r, "entropy", "layers")),
    ("pred_norm", f"predictor norm (last {_LAST_N}, mean of layers)", lambda r: _tail_mean(r, "pred_norm", "layers")),
    ("tokens_per_s", "tokens/s (median)", _median("tokens_per_s")),
    ("wall_s", "wall time (s)", _end("wall_s")),
]


def key_metrics(run: Run) -> dict[str, float | None]:
    return {name: fn(run) for name, _, fn in METRICS}


def _metric_rows(reports: list[Report]) -> list[Row]:
    vals = [key_metrics(rep.run) for rep in reports]
    rows = []
    for name, label, _ in METRICS:
        if all(v[name] is None for v in vals):
            continue
        units = {rep.run.unit for rep in reports}  # "experts per token" when every run routes experts
        label = reword(label, units.pop()) if len(units) == 1 else label
        rows.append(Row(name, label, None, "", [Cell(None, _num(v[name]), v[name]) for v in vals],
                        tuple(None if v[name] is None else meaning(rep.run, name) for rep, v in zip(reports, vals))))
    return rows


def _finding_rows(reports: list[Report]) -> list[tuple[str, str, list[int]]]:
    order = {"error": 0, "warning": 1, "info": 2}
    codes: dict[str, str] = {}
    for rep in reports:
        for f in rep.findings:
            s = codes.get(f.code)
            codes[f.code] = f.severity if s is None or order.get(f.severity, 3) < order.get(s, 3) else s
    out = []
    for code, sev in sorted(codes.items(), key=lambda kv: (order.get(kv[1], 3), kv[0])):
        out.append((code, sev, [sum(f.code == code for f in rep.findings) for rep in reports]))
    return out


def build_comparison(reports: list[Report]) -> Comparison:
    if len(reports) < 2:
        raise ValueError("compare needs at least two runs")
    return Comparison(reports, _criteria_rows(reports), _metric_rows(reports), _finding_rows(reports))


# ---- renderers -------------------------------------------------------------------------------


def _delta_text(d: float | None) -> str:
    if d is None or not math.isfinite(d):
        return ""
    return "±0" if d == 0 else f"{d:+.3g}"


def _names(cmp: Comparison) -> list[str]:
    return [rep.run.name for rep in cmp.reports]


def _criteria_set_lines(cmp: Comparison) -> list[str]:
    """Each run is judged by its own router's criteria set: say which, so that an n/a cell next
    to a pass (a dense run has no threshold) reads as "does not apply", not as a gap."""
    return [f"{rep.run.name}: {_criteria_line(rep)}" for rep in cmp.reports if _criteria_line(rep)]


def _delta_cells(row) -> list:
    """One rich cell per run: value, delta against the first run (dim), status when the row has one."""
    cells = []
    for i, (c, d) in enumerate(zip(row.cells, row.deltas())):
        txt = SafeText(c.text)
        if i and _delta_text(d):
            txt.append(f" ({_delta_text(d)})", style="dim")
        if c.status:  # metric rows carry no status
            txt.append(f" {c.status}", style=_STATUS_STYLE.get(c.status, ""))
        cells.append(txt)
    return cells


def render_table(cmp: Comparison) -> Group:
    names = _names(cmp)
    parts: list[Any] = [SafeText("moh compare  " + "  vs  ".join(names), style="bold")]
    parts += [SafeText(line, style="dim") for line in _criteria_set_lines(cmp)]
    t = Table(title="Criteria (Δ against the first run)", title_justify="left")
    t.add_column("Criterion")
    t.add_column("Target")
    for n in names:
        t.add_column(SafeText(n), justify="right", overflow="fold")
    for row in cmp.criteria:
        cells = _delta_cells(row)
        t.add_row(SafeText(row.title), SafeText(row.target), *cells)
    parts.append(t)
    m = Table(title="Key final metrics", title_justify="left")
    m.add_column("Metric")
    for n in names:
        m.add_column(SafeText(n), justify="right")
    for row in cmp.metrics:
        cells = _delta_cells(row)
        m.add_row(SafeText(row.title), *cells)
    parts.append(m)
    if cmp.findings:
        f = Table(title="Findings (count per run)", title_justify="left")
        f.add_column("Code")
        f.add_column("Severity")
        for n in names:
            f.add_column(SafeText(n), justify="right")
        for code, sev, counts in cmp.findings:
            f.add_row(SafeText(code), SafeText(sev), *[SafeText(str(c)) for c in counts])
        parts.append(f)
    verdicts = ", ".join(f"{rep.run.name}: {rep.verdict}" for rep in cmp.reports)
    parts.append(SafeText(f"{cmp.verdict.upper()}: {verdicts}",
                      style=_STATUS_STYLE["pass" if cmp.verdict == "pass" else "fail"]))
    return Group(*parts)


def render_md(cmp: Comparison) -> str:
    names = _names(cmp)
    lines = ["# moh compare: " + " vs ".join(md_escape(n) for n in names), ""]
    lines += [f"- {md_escape(rep.run.name)}: {md_escape(rep.run.path)}, verdict **{rep.verdict}**"
              for rep in cmp.reports]
    sets = _criteria_set_lines(cmp)
    if sets:
        lines += ["", "Criteria sets (each run by its own router's):", ""] + [f"- {md_escape(x)}" for x in sets]
    lines += ["", "## Criteria (Δ against the first run)", ""]

    def cell(c: Cell, d: float | None, i: int, status: bool = True) -> str:
        s = c.text + (f" ({_delta_text(d)})" if i and _delta_text(d) else "")
        return s + (f" {c.status}" if status and c.status else "")

    lines += _md_table(["Criterion", "Target", *names],
                       ([r.title, r.target,
                         *[cell(c, d, i) for i, (c, d) in enumerate(zip(r.cells, r.deltas()))]]
                        for r in cmp.criteria))
    lines += ["", "## Key final metrics", ""]
    lines += _md_table(["Metric", *names],
                       ([r.title, *[cell(c, d, i, False) for i, (c, d) in enumerate(zip(r.cells, r.deltas()))]]
                        for r in cmp.metrics))
    if cmp.findings:
        lines += ["", "## Findings (count per run)", ""]
        lines += _md_table(["Code", "Severity", *names],
                           ([code, sev, *map(str, counts)] for code, sev, counts in cmp.findings))
    return "\n".join(lines) + "\n"


def render_json(cmp: Comparison) -> str:
    return to_json(cmp.to_dict())


def render(cmp: Comparison, fmt: str) -> Group | str:
    from .render.html import compare_html  # imports this module's renderers' helpers

    return render_as(fmt, cmp, {"table": render_table, "md": render_md, "json": render_json, "html": compare_html})
