"""The findings API under its historical name: the rules themselves live in `analyze/rules/`,
one module per family (see its docstring for where a new rule goes)."""

from .rules import RULES, SEVERITIES, Finding, Margin, find_all, measure_all, routing_rule, rule

__all__ = ["Finding", "Margin", "RULES", "SEVERITIES", "find_all", "measure_all", "rule", "routing_rule"]
