"""Findings: diagnosis rules that read a loaded `Run` and say what is wrong, why, and what to do.

One small function per rule, in the module of its family; `@rule` / `@routing_rule` register
it in `RULES` and `find_all(run)` runs them all. Every rule reads `run.semantics` so its message
says what the numbers are (a hard head count or a soft-weight sum; a gradient norm before or
after clipping, per step or an epoch mean). A dense run gets no routing findings: its routing
stats are null by design. Thresholds are named constants next to the rules that use them (the
ones several families share are in `base`), each with the reason for its value;
`docs/findings.md` documents every code.

Severity: "error" -- the telemetry or the training is broken (a stat that measures nothing, a
blocked gradient, a diverging loss); "warning" -- likely wrong, look before trusting the run;
"info" -- worth knowing, not a fault. A healthy engine run produces no warning or error.

Where a new rule goes: the family module whose subject it judges --

    statistics   per-layer routing stats: silent_zero, missing_stat, constant_stat,
                 degenerate_range, redundant_stat
    gradients    gradient norms: router_grad_zero, grad_explosion, clip_saturation
    loss         the loss and non-finite values: loss_not_converging, loss_divergence, nonfinite
    heads        head use over the final window: head_collapse, dead_heads, load_imbalance
    predictors   predictors and aux losses: predictor_growth, aux_dominates, vacuous_aux
    alignment    does the allocation track difficulty: complexity_uninformative
    allocation   whether adaptive routing still adapts: threshold_pinned, uniform_allocation,
                 budget_miss

or a new module for a new family, imported below. Decorate the function with `@rule` (or
`@routing_rule` when a dense run cannot have the fault), take a `Context`, return Findings built
with `base.evidence`; add its code to docs/findings.md and a trigger to tests/analyze/test_findings.py.
"""

# Importing a family registers its rules, in this order (the order they were written in; the
# report sorts findings, so it does not show).
from . import statistics, gradients, loss, heads, predictors, allocation, alignment  # noqa: F401,I001
from .base import SEVERITIES, Finding
from .margins import Margin
from .registry import RULES, find_all, measure_all, routing_rule, rule

__all__ = ["Finding", "Margin", "RULES", "SEVERITIES", "find_all", "measure_all", "rule", "routing_rule"]
