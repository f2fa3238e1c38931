"""Where a nat-stats pass reads the NAT table, and how it splits between the loop and the
recount thread.

A pass has two steps. ``EndpointCounter.snapshot()`` runs on the loop, the only thread
that drives the datapath, and takes what the loop could change meanwhile; the call it
returns runs on the recount thread (``recountthread``) and reads or counts the rest. So
the thread shares nothing with what the loop does next (apply, the failure counters):

- kernel (``ConntrackCounter``): nothing to take on the loop; the thread dumps conntrack
  over a ctnetlink socket of its own (the loop keeps the datapath's for the statistics);
- bpf (``BpfMapCounter``): the loop handles the program's ``nat_fill_up`` signals first
  (and the GC pass they ask for), as ``BpfDatapath.endpoint_counts`` does; the thread then
  walks the pinned NAT maps through file descriptors of its own (bpf(2) through ctypes:
  the GIL is released during each batch lookup);
- model (``ModelCounter``): the loop copies the NAT map's keys
  (``ModelDatapath.endpoint_counts_later``), the thread counts the copy: the model is
  plain Python objects that ``connect`` changes on the loop's thread.

``DatapathCounter`` counts through the datapath itself in one step, for datapaths that
offer nothing else and for ``AgentConfig(background_recount=False)``: both steps then run
on the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from egressgw.datapath.base import Datapath, ReportsTakeover
from egressgw.datapath.kernel.conntrack import ConntrackReader
from egressgw.datapath.kernel.datapath import KernelDatapath
from egressgw.errors import DatapathError
from egressgw.net import Family, NatEndpoint

if TYPE_CHECKING:  # the BPF layer and the model load numpy and the compiled engine
    from egressgw.datapath.bpf.datapath import BpfDatapath
    from egressgw.datapath.bpf.syscall import BpfMap
    from egressgw.datapath.model import ModelDatapath

# Connections per nat-stats key, and of them the ones whose port can be taken over
# (None: the datapath does not say).
Usage = tuple[Mapping[NatEndpoint, int], Mapping[NatEndpoint, int] | None]
# The rest of a pass, after its snapshot: run on the recount thread (or on the loop).
ReadUsage = Callable[[], Usage]


class EndpointCounter(Protocol):
    """Reads the NAT table: ``snapshot()`` and then the call it returns are one pass."""

    def snapshot(self) -> ReadUsage:
        """On the loop: take what the loop may change meanwhile; return the rest."""

    def close(self) -> None: ...


@runtime_checkable
class CountsInBackground(Protocol):
    """A datapath that hands out its own counter whose reading step may run beside the
    loop: with resources of its own, so it never shares a socket, a buffer or a Python
    object with ``apply`` or the failure counters running at the same time."""

    def background_counter(self) -> EndpointCounter: ...


class DatapathCounter:
    """Counts through the datapath itself: only from the thread that drives it."""

    def __init__(self, datapath: Datapath) -> None:
        self._datapath = datapath

    def snapshot(self) -> ReadUsage:
        # Used on the loop only (both steps run there): nothing to take ahead.
        return self.usage

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

    def snapshot(self) -> ReadUsage:
        return self.usage

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


NAT_MAPS = (("snat_v4", Family.IPV4), ("snat_v6", Family.IPV6))


class BpfMapCounter:
    """The BPF datapath's NAT maps, walked through file descriptors of the counter's own.

    The same read as ``BpfDatapath.endpoint_counts``: pkg/maps/nat/stats ``countNat``
    over BPF_MAP_LOOKUP_BATCH walks of both families' maps (``natmap``). ``snapshot``
    runs on the loop and handles the program's signals there first, as that method does;
    the walk opens the pins on first use and keeps them open (a pinned map outlives any
    fd, and ``--cleanup`` is another process).
    """

    def __init__(self, datapath: BpfDatapath, *,
                 open_map: Callable[[str], BpfMap] | None = None) -> None:
        """``open_map(path)`` opens a pinned map (default ``BpfMap.open_pinned``)."""
        self._datapath = datapath
        self._pin_dir: Path = datapath.pin_dir
        self._open_map = open_map
        self._maps: list[tuple[BpfMap, Family]] | None = None

    def snapshot(self) -> ReadUsage:
        self._datapath.handle_signals()
        return self.usage

    def usage(self) -> Usage:
        from egressgw.datapath.bpf.natmap import (  # noqa: PLC0415 (numpy, on first pass)
            endpoint_counts,
            read_nat_map,
        )

        counts: dict[NatEndpoint, int] = {}
        for nat_map, family in self._open():
            counts.update(endpoint_counts(read_nat_map(nat_map, family)))
        return counts, None

    def _open(self) -> list[tuple[BpfMap, Family]]:
        from egressgw.datapath.bpf.syscall import BpfMap  # noqa: PLC0415

        if self._maps is None:
            open_map = self._open_map or BpfMap.open_pinned
            opened: list[tuple[BpfMap, Family]] = []
            try:
                for name, family in NAT_MAPS:
                    path = self._pin_dir / name
                    if not path.exists():
                        raise DatapathError(f"{path}: no NAT map pinned (not applied yet?)")
                    opened.append((open_map(str(path)), family))
            except BaseException:
                for nat_map, _family in opened:
                    nat_map.close()
                raise
            self._maps = opened
        return self._maps

    def close(self) -> None:
        for nat_map, _family in self._maps or ():
            nat_map.close()
        self._maps = None


class ModelCounter:
    """The model datapath: its NAT keys copied on the loop, counted on the thread."""

    def __init__(self, model: ModelDatapath) -> None:
        self._model = model

    def snapshot(self) -> ReadUsage:
        count = self._model.endpoint_counts_later()
        return lambda: (count(), None)

    def close(self) -> None:
        pass


def background_counter(datapath: Datapath) -> EndpointCounter | None:
    """A counter for ``datapath`` whose reading step may run beside the loop, or None
    (count inline through the datapath)."""
    if isinstance(datapath, CountsInBackground):
        return datapath.background_counter()
    if isinstance(datapath, KernelDatapath):
        return ConntrackCounter(datapath.netns)
    from egressgw.datapath.bpf.datapath import BpfDatapath  # noqa: PLC0415 (numpy)

    if isinstance(datapath, BpfDatapath):
        return BpfMapCounter(datapath)
    return None
