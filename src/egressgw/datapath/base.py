"""The interface every datapath (kernel, model) offers the agent."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from egressgw.net import NatEndpoint
from egressgw.rules import EgressRule


class Datapath(Protocol):
    """A place where egress rules are enforced and connections are source-NATed."""

    def apply(self, rules: Sequence[EgressRule]) -> None:
        """Make ``rules`` the rules in force, all at once or not at all.

        Raises DatapathError and leaves the previous rules in force when refused.
        """

    def endpoint_counts(self) -> Mapping[NatEndpoint, int]:
        """Connections currently holding a NAT source port, per nat-stats key."""

    def allocation_failures(self) -> Mapping[str, int]:
        """Cumulative counters of failed port allocations, by reason."""

    def cleanup(self) -> None:
        """Remove everything this datapath installed."""


@runtime_checkable
class ReportsTakeover(Protocol):
    """A datapath that can say which entries' ports a new connection may take over.

    Linux's nf_nat takes over ports held by TCP entries in TIME_WAIT, CLOSE or SYN_SENT2
    (egressgw.limits.TAKEOVER_TCP_STATES); those entries do not block a port.
    """

    def endpoint_usage(self) -> tuple[Mapping[NatEndpoint, int], Mapping[NatEndpoint, int]]:
        """(connections per nat-stats key, how many of them can be taken over), one pass."""
