"""Compiled egress rules: moved to :mod:`egressgw.rules` (the core); re-exported here."""

from egressgw.rules import (
    KIND_PRIORITY,
    EgressRule,
    RuleKind,
    RuleLookup,
    precedence,
    rules_for_gateway,
    sort_rules,
)

__all__ = [
    "KIND_PRIORITY",
    "EgressRule",
    "RuleKind",
    "RuleLookup",
    "precedence",
    "rules_for_gateway",
    "sort_rules",
]
