"""The findings API under its historical name: the rules themselves live in `analyze/rules/`,
one module per family (see its docstring for where a new rule goes)."""

from .rules import RULES, SEVERITIES, Finding, find_all, routing_rule, rule

__all__ = ["Finding", "RULES", "SEVERITIES", "find_all", "rule", "routing_rule"]
