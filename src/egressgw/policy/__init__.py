"""Egress gateway policies: parsing, validation, inventory, and compiling to rules.

The public API::

    load_policies(path) -> list[EgressPolicy]
    load_inventory(path) -> Inventory              # an InventorySource
    compile_rules(policies, inventory) -> list[EgressRule]
    compile_policies(policies, inventory) -> Compiled(rules, warnings)
    sort_rules(rules) -> list[EgressRule]         # IPv4 first, then source, destination
"""

from egressgw.policy.compile import Compiled, compile_policies, compile_rules, fnv1a_32
from egressgw.policy.inventory import (
    Endpoint,
    Interface,
    Inventory,
    InventorySource,
    Node,
    load_inventory,
    parse_inventory,
)
from egressgw.policy.labels import LabelSelector, Operator, Requirement, parse_label_selector
from egressgw.policy.model import EgressPolicy, EndpointSelector, GatewaySpec
from egressgw.policy.parse import load_policies, parse_documents, parse_policy
from egressgw.rules import EgressRule, RuleKind, rules_for_gateway, sort_rules

__all__ = [
    "Compiled",
    "EgressPolicy",
    "EgressRule",
    "Endpoint",
    "EndpointSelector",
    "GatewaySpec",
    "Interface",
    "Inventory",
    "InventorySource",
    "LabelSelector",
    "Node",
    "Operator",
    "Requirement",
    "RuleKind",
    "compile_policies",
    "compile_rules",
    "fnv1a_32",
    "load_inventory",
    "load_policies",
    "parse_documents",
    "parse_inventory",
    "parse_label_selector",
    "parse_policy",
    "rules_for_gateway",
    "sort_rules",
]
