"""The dashboard of `moh watch`: one rich panel per run, drawn from a `LiveRun` (no reading,
no judging here). Every string that comes from a log goes through `SafeText` (no markup, no
terminal escapes)."""

from __future__ import annotations

import math

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..report import SafeText
from .records import number
from .state import LiveRun

_BARS = "▁▂▃▄▅▆▇█"
_SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
FINDINGS_SHOWN = 8


def sparkline(values) -> str:
    """Values as one row of block characters, lowest to highest; a gap for a missing value."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = hi - lo
    out = []
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(" ")
        else:
            out.append(_BARS[0 if span == 0 else min(len(_BARS) - 1, int((v - lo) / span * len(_BARS)))])
    return "".join(out)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _num(v, fmt: str = ".4g") -> str:
    x = number(v)
    return "-" if x is None else format(x, fmt)


def _state(live: LiveRun) -> Text:
    if live.start is None and live.step is None:
        return Text("waiting for the log", style="dim")
    if live.end is None:
        return Text("running" + (f" (resumed {live.resumes}x)" if live.resumes else ""), style="bold cyan")
    status = str(live.end.get("status"))
    if not live.finished:
        return Text(f"{status}: waiting for `moh train --resume`", style="yellow")
    return SafeText(f"ended: {status}", style="bold green" if status == "completed" else "bold red")


def _progress(live: LiveRun) -> Text:
    s = live.step or {}
    plan = live.plan() or {}
    phase = s.get("phase")
    t = SafeText(f"phase {phase or '-'}")
    epoch = s.get("epoch")
    if isinstance(epoch, int):
        of = plan.get(phase, {}).get("epochs")
        t.append(f"  epoch {epoch + 1}" + (f"/{of}" if of else ""))
    total = live.total_steps()
    t.append(f"  step {s.get('step', '-')}" + (f"/{total}" if total else ""))
    t.append(f"  elapsed {duration(number(s.get('elapsed')))}  ETA {duration(live.eta_s())}")
    return t


def _metrics(live: LiveRun) -> Table:
    s = live.step or {}
    tab = Table.grid(padding=(0, 2))
    for name, value, key in (("loss", _num(s.get("loss")), "loss"),
                             ("grad norm", _num(s.get("grad_norm")), "grad_norm"),
                             ("heads", _num(live.mean_heads(s) if s else None, ".3g"), "heads")):
        tab.add_row(Text(name, style="dim"), Text(value), Text(sparkline(live.series[key]), style="cyan"))
    return tab


def _layers(live: LiveRun) -> Table | None:
    rows = [l for l in (live.step or {}).get("layers") or [] if isinstance(l, dict)]
    if not rows:
        return None
    tab = Table(box=None, padding=(0, 1), show_edge=False)
    for col in ("layer", "heads", "heads min-max", "threshold", "complexity"):
        tab.add_column(col, justify="right" if col == "layer" else "left")

    def rng(l, base):
        lo, hi = _num(l.get(f"{base}_min"), ".3g"), _num(l.get(f"{base}_max"), ".3g")
        return "-" if lo == hi == "-" else f"{lo}..{hi}"

    for l in rows:
        tab.add_row(SafeText(l.get("layer", "?")), _num(l.get("heads_mean"), ".3g"), rng(l, "heads"),
                    rng(l, "threshold"), rng(l, "complexity"))
    return tab


def _findings(live: LiveRun) -> list:
    out = []
    title = "findings" if live.report is not None else "findings so far (early rules)"
    if live.findings:
        out.append(Text(title, style="bold"))
        for f in live.findings[:FINDINGS_SHOWN]:
            line = Text("  ", no_wrap=True, overflow="ellipsis")  # one line each: the report has the rest
            line.append(f"{f.severity:<7} ", style=_SEVERITY_STYLE.get(f.severity, ""))
            line.append(f"{f.code} ", style="bold")
            line.append_text(SafeText(f.message))
            out.append(line)
        if len(live.findings) > FINDINGS_SHOWN:
            out.append(Text(f"  ... and {len(live.findings) - FINDINGS_SHOWN} more (moh report)", style="dim"))
    elif live.n_steps:
        out.append(Text(f"{title}: none", style="dim"))
    for a in live.alerts[-3:]:
        out.append(SafeText(f"alert ({a.get('level')}) at step {a.get('step')}: {a.get('code')}: {a.get('message')}",
                            style=_SEVERITY_STYLE.get(str(a.get("level")), ""), no_wrap=True, overflow="ellipsis"))
    return out


def verdict_line(live: LiveRun) -> Text | None:
    rep = live.report
    if rep is None:
        return None
    c, f = rep.counts, rep.finding_counts
    return Text(f"VERDICT {rep.verdict.upper()}: criteria {c['pass']} passed, {c['fail']} failed; "
                f"findings {f['error']} error, {f['warning']} warning",
                style="bold green" if rep.verdict == "pass" else "bold red")


def render_run(live: LiveRun) -> Panel:
    parts: list = [_state(live)]
    if live.step is not None:
        parts += [_progress(live), _metrics(live)]
        layers = _layers(live)
        if layers is not None:
            parts.append(layers)
    parts += _findings(live)
    if live.bad[0]:
        parts.append(Text(f"{live.bad[0]} lines not JSON records (skipped)", style="dim"))
    if live.error:
        parts.append(SafeText(f"error: {live.error}", style="red"))
    v = verdict_line(live)
    if v is not None:
        parts.append(v)
    router = ((live.start or {}).get("model") or {}).get("router")
    title = SafeText(f"{live.path}" + (f"  ({router})" if router else ""))
    return Panel(Group(*parts), title=title, title_align="left", expand=True)


def render(runs: list[LiveRun]) -> Group:
    return Group(*(render_run(r) for r in runs))
