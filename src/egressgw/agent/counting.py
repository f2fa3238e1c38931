"""Where a nat-stats pass reads the NAT table, and whether it may run beside the loop.

A pass on a thread of its own must share nothing with what the loop does meanwhile
(apply, the failure counters): the kernel datapath's loop keeps its own ctnetlink socket
for the conntrack statistics, so the pass opens another one. A datapath that cannot
offer that (the model: its tables are plain Python objects that ``connect`` changes) is
counted on the loop, as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from egressgw.datapath.base import Datapath, ReportsTakeover
from egressgw.datapath.kernel.conntrack import ConntrackReader
from egressgw.datapath.kernel.datapath import KernelDatapath
from egressgw.net import NatEndpoint

# Connections per nat-stats key, and of them the ones whose port can be taken over
# (None: the datapath does not say).
Usage = tuple[Mapping[NatEndpoint, int], Mapping[NatEndpoint, int] | None]


class EndpointCounter(Protocol):
    """Reads the NAT table: one call is one pass."""

    def usage(self) -> Usage: ...

    def close(self) -> None: ...


@runtime_checkable
class CountsInBackground(Protocol):
    """A datapath that hands out a counter usable from a thread other than the loop's:
    with resources of its own, so a pass never shares a socket, a buffer or a Python
    object with ``apply`` or the failure counters running at the same time."""

    def background_counter(self) -> EndpointCounter: ...


class DatapathCounter:
    """Counts through the datapath itself: only from the thread that drives it."""

    def __init__(self, datapath: Datapath) -> None:
        self._datapath = datapath

    def usage(self) -> Usage:
        if isinstance(self._datapath, ReportsTakeover):
            return self._datapath.endpoint_usage()
        return self._datapath.endpoint_counts(), None

    def close(self) -> None:
        pass


class ConntrackCounter:
    """The kernel's conntrack table through a ctnetlink socket of the counter's own.

    The same read as ``KernelDatapath.endpoint_usage`` (one dump of each family, with
    the TCP states that nf_nat takes over), on a socket the loop never touches. The
    socket is opened in ``netns`` on first use and stays bound to it.
    """

    def __init__(self, netns: str | None) -> None:
        self._netns = netns
        self._reader: ConntrackReader | None = None

    def usage(self) -> Usage:
        if self._reader is None:
            self._reader = ConntrackReader(self._netns)
        reusable: dict[NatEndpoint, int] = {}
        counts = self._reader.snat_counts(reusable)
        return counts, reusable

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def background_counter(datapath: Datapath) -> EndpointCounter | None:
    """A counter for ``datapath`` that may run beside the loop, or None (count inline)."""
    if isinstance(datapath, CountsInBackground):
        return datapath.background_counter()
    if isinstance(datapath, KernelDatapath):
        return ConntrackCounter(datapath.netns)
    return None
