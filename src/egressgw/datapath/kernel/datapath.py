"""KernelDatapath: egress rules as one nftables table, conntrack as the NAT table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from egressgw.config import NodePortRange
from egressgw.datapath.kernel.conntrack import ConntrackReader
from egressgw.datapath.kernel.netns import check_netns_name
from egressgw.datapath.kernel.nft import list_table, run_nft
from egressgw.datapath.kernel.ruleset import check_table_name, render_delete, render_ruleset
from egressgw.net import NatEndpoint
from egressgw.rules import EgressRule


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
        """The table as the kernel holds it now."""
        return list_table(self.table, netns=self.netns)

    def _conntrack(self) -> ConntrackReader:
        if self._reader is None:
            self._reader = ConntrackReader(self.netns)
        return self._reader

    def endpoint_counts(self) -> Mapping[NatEndpoint, int]:
        return self._conntrack().snat_counts()

    def allocation_failures(self) -> Mapping[str, int]:
        return self._conntrack().allocation_failures()

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
