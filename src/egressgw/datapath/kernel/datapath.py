"""KernelDatapath: egress rules as one nftables table, conntrack as the NAT table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from egressgw.config import NodePortRange
from egressgw.datapath.kernel.conntrack import ConntrackReader
from egressgw.datapath.kernel.netns import check_netns_name
from egressgw.datapath.kernel.nft import list_counters, list_table, run_nft
from egressgw.datapath.kernel.ruleset import (
    check_table_name,
    failed_counter_names,
    render_delete,
    render_ruleset,
    without_tracking_state,
)
from egressgw.errors import DatapathError
from egressgw.net import NatEndpoint
from egressgw.rules import EgressRule

# The reason labels of the two failure counts (docs/kernel-datapath.md).
FAILED_CONNECTIONS = "no free NAT port"
DROP_INSERT_FAILED = "conntrack insert_failed"
DROP_OTHER = "conntrack drop (other)"


class KernelDatapath:
    """The Linux kernel as the datapath of one gateway node (optionally in a netns).

    ``apply`` replaces table ``inet <table>`` in one nft transaction, so either all the
    new rules are in force or the previous ones still are. Connections already tracked
    keep their NAT mapping across an apply: conntrack, not the ruleset, holds it.
    """

    def __init__(
        self,
        node_port_range: NodePortRange,
        *,
        table: str = "egressgw",
        netns: str | None = None,
    ) -> None:
        self.node_port_range = node_port_range
        self.table = check_table_name(table)
        self.netns = None if netns is None else check_netns_name(netns)
        self._reader: ConntrackReader | None = None

    def render(self, rules: Sequence[EgressRule]) -> str:
        """The nft script ``apply`` would load (pure; for dry runs and docs)."""
        return render_ruleset(rules, self.node_port_range, table=self.table)

    def apply(self, rules: Sequence[EgressRule]) -> None:
        """Put ``rules`` in force (this node's: see ``rules_for_gateway``), atomically."""
        self.load(self.render(rules))

    def load(self, script: str) -> None:
        """Load an nft script as one transaction (DatapathError with nft's message)."""
        run_nft(script, netns=self.netns)

    def ruleset(self) -> str:
        """The table's rules as the kernel holds them now (without the failure-tracking
        sets' elements and counter values, which every new connection changes)."""
        return without_tracking_state(list_table(self.table, netns=self.netns))

    def _conntrack(self) -> ConntrackReader:
        if self._reader is None:
            self._reader = ConntrackReader(self.netns)
        return self._reader

    def endpoint_counts(self) -> Mapping[NatEndpoint, int]:
        return self._conntrack().snat_counts()

    def endpoint_usage(self) -> tuple[Mapping[NatEndpoint, int], Mapping[NatEndpoint, int]]:
        """Connections per key and, of them, the TCP entries in a state whose port the
        kernel takes over when its search gets hard (TIME_WAIT, CLOSE, SYN_SENT2)."""
        reusable: dict[NatEndpoint, int] = {}
        counts = self._conntrack().snat_counts(reusable)
        return counts, reusable

    def allocation_failures(self) -> Mapping[str, int]:
        """Failed connection attempts, once per tuple however often the client retries:
        the table's ``failed4``/``failed6`` counters (0 before the first apply)."""
        try:
            counters = list_counters(self.table, netns=self.netns)
        except DatapathError:
            if self._table_exists():
                raise
            counters = {}
        return {FAILED_CONNECTIONS: sum(counters.get(n, 0) for n in failed_counter_names())}

    def drop_counts(self) -> Mapping[str, int]:
        """Packets conntrack dropped, each once: refused at confirm (``insert_failed``,
        a new connection's packet that found no free NAT port, retransmissions included)
        and the rest of ``drop`` (which also counts every insert_failed packet)."""
        stats = self._conntrack().stats()
        insert_failed = stats["insert_failed"]
        return {DROP_INSERT_FAILED: insert_failed,
                DROP_OTHER: max(0, stats["drop"] - insert_failed)}

    def conntrack_stats(self) -> Mapping[str, int]:
        """The kernel's per-CPU conntrack counters, summed (insert_failed, drop, ...)."""
        return self._conntrack().stats()

    def _table_exists(self) -> bool:
        try:
            self.ruleset()
        except DatapathError:
            return False
        return True

    def cleanup(self) -> None:
        """Delete our table (and only it); close the conntrack socket."""
        try:
            run_nft(render_delete(table=self.table), netns=self.netns)
        finally:
            if self._reader is not None:
                self._reader.close()
                self._reader = None


if TYPE_CHECKING:  # KernelDatapath must keep satisfying the Datapath protocol.
    from egressgw.datapath.base import Datapath

    _conforms: Datapath = KernelDatapath(NodePortRange())
