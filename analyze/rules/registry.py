"""The rule registry: `@rule` / `@routing_rule` add a function to RULES; `find_all` runs them.

A rule is a function `Context -> list[Finding]` in the module of its family; importing the
family (analyze/rules/__init__.py) registers it. RULES keeps import order; the report sorts
findings by severity, code and layer, so the order never shows.
"""

from __future__ import annotations

from typing import Callable

from ..run import Run
from .base import SEVERITIES, Finding
from .context import Context
from .margins import Margin

RULES: list[Callable[[Context], list[Finding]]] = []


def rule(fn: Callable[[Context], list[Finding]]) -> Callable[[Context], list[Finding]]:
    RULES.append(fn)
    return fn


def routing_rule(fn: Callable[[Context], list[Finding]]) -> Callable[[Context], list[Finding]]:
    """A rule about routing: silent on a dense run (its routing stats are null by design)."""
    def wrapped(ctx: Context) -> list[Finding]:
        return fn(ctx) if ctx.routing else []
    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    RULES.append(wrapped)
    return wrapped


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Findings from several sources (the rules, a baseline comparison) in find_all's order:
    errors first, then warnings, then info; by code and layer within a severity."""
    order = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(findings, key=lambda f: (order[f.severity], f.code, -1 if f.layer is None else f.layer))


def find_all(run: Run) -> list[Finding]:
    """Every finding for `run`, errors first, then warnings, then info."""
    return measure_all(run)[0]


def measure_all(run: Run) -> tuple[list[Finding], list[Margin]]:
    """Every finding for `run` (sorted as find_all) and every rule statistic the rules compared
    with a threshold on it (the calibration table, bench/calibrate.py)."""
    ctx = Context(run)
    out: list[Finding] = []
    for r in RULES:
        out.extend(r(ctx))
    order = {s: i for i, s in enumerate(SEVERITIES)}
    found = sorted(out, key=lambda f: (order[f.severity], f.code, -1 if f.layer is None else f.layer))
    return found, list(ctx.margins)
