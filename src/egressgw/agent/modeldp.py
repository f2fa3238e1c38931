"""``--datapath model``: the model of Cilium's BPF SNAT behind the Datapath interface.

``apply`` only records the rules: the model carries no traffic by itself. Whoever drives
it (a test, a simulation) sends connections through :meth:`ModelAgentDatapath.connect`,
which routes them by the applied rules the way the gateway would: masquerade behind the
rule's egress IP, pass excluded destinations unchanged, drop when no gateway matched.
The agent then counts, exports and alerts on the model exactly as on the kernel.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping, Sequence

from egressgw.config import NodePortRange
from egressgw.datapath.model import ConnectResult, DropReason, ModelConfig, ModelDatapath
from egressgw.net import FiveTuple, NatEndpoint
from egressgw.rules import EgressRule, RuleKind, RuleLookup

from .counting import ModelCounter

# Cilium's drop reason 194 (pkg/monitor/api), for traffic whose policy has no gateway.
NO_GATEWAY_REASON = "No egress gateway found"


class Verdict(enum.StrEnum):
    """What happened to a connection that the model did not source-NAT."""

    PASSED = "passed"  # no rule for it, or an excluded destination: left as it is
    NO_GATEWAY = "no-gateway"  # its policy has no gateway node: dropped (reason 194)


class ModelAgentDatapath:
    """A Datapath over :class:`ModelDatapath` that routes connections by applied rules."""

    def __init__(self, model: ModelDatapath) -> None:
        self.model = model
        self._rules = RuleLookup(())
        self._no_gateway_drops = 0

    @classmethod
    def for_node_ports(
        cls, node_port_range: NodePortRange, *, seed: int = 0, cilium_version: str = "1.16",
        nat_lru: str = "exact", possible_cpus: int = 8, flow_cpus: str = "hash",
        bpf_distributed_lru: bool = False,
    ) -> ModelAgentDatapath:
        """A fresh model with Cilium's defaults, ``node_port_range`` and the port search of
        ``cilium_version``.

        It runs the reference engine: the agent drives connections one at a time, where
        the compiled engine's speed does not show but its load time (seconds) would.
        """
        config = ModelConfig(node_port_range=node_port_range, cilium_version=cilium_version,
                             nat_lru=nat_lru, possible_cpus=possible_cpus, flow_cpus=flow_cpus,
                             bpf_distributed_lru=bpf_distributed_lru)
        return cls(ModelDatapath(config, random.Random(seed), engine="reference"))

    # -- the Datapath interface ----------------------------------------------------------

    def apply(self, rules: Sequence[EgressRule]) -> None:
        # Longest prefix first: an excluded CIDR inside a destination CIDR wins.
        self._rules = RuleLookup(rules)

    def endpoint_counts(self) -> Mapping[NatEndpoint, int]:
        return self.model.endpoint_counts()

    def allocation_failures(self) -> Mapping[str, int]:
        reason = DropReason.NAT_NO_MAPPING
        return {reason.text: self.model.counters.drops.get(int(reason), 0)}

    def drop_counts(self) -> Mapping[str, int]:
        """Every drop by Cilium's reason text, including traffic without a gateway."""
        counters = self.model.counters
        drops = {counters.reason_text(code): n for code, n in counters.drops.items()}
        drops[DropReason.NAT_NO_MAPPING.text] = drops.get(DropReason.NAT_NO_MAPPING.text, 0)
        drops[NO_GATEWAY_REASON] = self._no_gateway_drops
        return drops

    def cleanup(self) -> None:
        self._rules = RuleLookup(())

    def background_counter(self) -> ModelCounter:
        """nat-stats off the loop: the NAT keys are copied on the loop (the thread that
        drives ``connect``), then counted on the recount thread (agent/counting.py)."""
        return ModelCounter(self.model)

    # -- driving traffic -----------------------------------------------------------------

    def rule_for(self, tup: FiveTuple) -> EgressRule | None:
        """The applied rule that decides ``tup``'s fate, or None (not egress traffic)."""
        return self._rules.lookup(tup.src.ip, tup.dst.ip)

    def connect(self, tup: FiveTuple) -> ConnectResult | Verdict:
        """Open a connection from a pod through the gateway.

        Masqueraded connections get the model's result (a port, or a drop when the port
        search failed); the others get a :class:`Verdict`.
        """
        rule = self.rule_for(tup)
        if rule is None or rule.kind is RuleKind.EXCLUDED:
            return Verdict.PASSED
        if rule.kind is RuleKind.NO_GATEWAY or rule.egress_ip is None:
            self._no_gateway_drops += 1
            return Verdict.NO_GATEWAY
        return self.model.connect(tup, rule.egress_ip)
