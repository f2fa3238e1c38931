"""``ModelDatapath``: Cilium's BPF SNAT in memory, behind the project's value types."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Literal

from egressgw.datapath.model.addresses import AddressTable
from egressgw.datapath.model.compiled import CompiledModel
from egressgw.datapath.model.config import ModelConfig
from egressgw.datapath.model.engine import Engine
from egressgw.datapath.model.netfilter import NetfilterModel
from egressgw.datapath.model.reference import OUT, ConnKey, ReferenceModel, count_in_endpoints
from egressgw.datapath.model.types import (
    ConnectionBatch,
    ConnectResult,
    DropReason,
    EndKind,
    ModelCounters,
    PacketResult,
    TcpFlags,
)
from egressgw.errors import DatapathError
from egressgw.net import (
    Direction,
    Endpoint,
    Family,
    FiveTuple,
    IPAddress,
    NatEndpoint,
    NatEntry,
    Proto,
)

EngineName = Literal["compiled", "reference"]


def _drop(code: int) -> DropReason | None:
    return DropReason(code) if code else None


class ModelDatapath:
    """The model datapath on a virtual clock that starts at 0.0.

    ``rng`` is the only source of randomness: each 16-bit value is drawn with
    ``rng.getrandbits(16)`` where nat.h calls ``get_prandom_u32``, so equal seeds give
    equal ports. ``engine="reference"`` runs the plain-Python reference implementation
    (slow, readable); the default compiled kernel behaves identically. The compiled
    kernel keeps an exact LRU only: with ``nat_lru="kernel"`` the reference engine runs.
    """

    def __init__(
        self, config: ModelConfig, rng: random.Random, *, engine: EngineName = "compiled"
    ) -> None:
        self.config = config
        self.addresses = AddressTable()
        self._engine: Engine
        if config.datapath_model == "netfilter":
            # A Linux gateway: one plain-Python engine (netfilter.py), whatever ``engine``.
            self._engine = NetfilterModel(config, rng)
        elif engine == "reference" or config.nat_lru != "exact":
            self._engine = ReferenceModel(config, rng)
        elif engine == "compiled":
            self._engine = CompiledModel(config, rng)
        else:
            raise ValueError(f"unknown engine {engine!r}")

    @property
    def engine(self) -> Engine:
        """The engine behind this datapath, for inspection (tests, benchmarks, notebooks).

        A ``CompiledModel`` (the default), ``ReferenceModel`` (``engine="reference"`` or
        ``nat_lru="kernel"``) or ``NetfilterModel`` (``datapath_model="netfilter"``); narrow
        with ``isinstance`` before reaching past the ``Engine`` protocol. Driving it directly
        bypasses the argument checks of this class.
        """
        return self._engine

    @property
    def now(self) -> float:
        return self._engine.now

    @property
    def counters(self) -> ModelCounters:
        return self._engine.counters

    def sync_rng(self) -> None:
        """Bring ``rng`` up to date with the model's draws.

        The compiled engine draws from its own copy of ``rng``'s state, taken when the
        datapath was made (copying it per call cost a packet call most of its time); this
        writes the copy back, so ``rng`` continues exactly where the model stopped, as
        the reference engine's ``rng`` does all along. Draws made from ``rng`` elsewhere
        after the datapath was made are not seen by the compiled model.
        """
        self._engine.sync_rng()

    def intern(self, ip: IPAddress) -> int:
        """The address id to use for ``ip`` in a ConnectionBatch."""
        return self.addresses.intern(ip)

    def _key(self, tup: FiveTuple, egress_ip: IPAddress) -> tuple[ConnKey, int]:
        if egress_ip.version != tup.src.ip.version:
            raise DatapathError(f"egress IP {egress_ip} is not of the family of {tup}")
        intern = self.addresses.intern
        key = (intern(tup.src.ip), tup.src.port, intern(tup.dst.ip), tup.dst.port, int(tup.proto))
        return key, intern(egress_ip)

    # -- per connection -----------------------------------------------------------------

    def connect(self, tup: FiveTuple, egress_ip: IPAddress) -> ConnectResult:
        """The first packet of a connection (TCP: a SYN; for ICMP echo, the echo id is the
        port). Only this packet: ``open`` is the whole handshake."""
        key, egress = self._key(tup, egress_ip)
        port, drop, retries = self._engine.connect(key, egress)
        return ConnectResult(port if port >= 0 else None, _drop(drop), retries)

    def open(self, tup: FiveTuple, egress_ip: IPAddress) -> ConnectResult:
        """A connection's first exchange, as the bulk engine starts one: TCP's handshake
        (SYN, SYN-ACK, ACK: the CT entry is then established), else a packet and its reply."""
        key, egress = self._key(tup, egress_ip)
        port, drop, retries = self._engine.first_exchange(key, egress)
        return ConnectResult(port if port >= 0 else None, _drop(drop), retries)

    def send(
        self, tup: FiveTuple, egress_ip: IPAddress, flags: TcpFlags = TcpFlags.NONE
    ) -> PacketResult:
        """A later packet from the pod: takes a new port (broken) if the OUT entry is gone.

        ``flags``: SYN for a retransmitted SYN, FIN or RST."""
        key, egress = self._key(tup, egress_ip)
        port, drop, broken, retries = self._engine.send(key, egress, int(flags))
        return PacketResult(port if port >= 0 else None, _drop(drop), broken, retries)

    def reply(
        self, tup: FiveTuple, egress_ip: IPAddress, flags: TcpFlags = TcpFlags.NONE
    ) -> PacketResult:
        """A packet from the remote back to the port the connection last had.

        ``flags``: SYN for the SYN-ACK, FIN or RST."""
        key, _egress = self._key(tup, egress_ip)
        port, drop = self._engine.reply(key, int(flags))
        return PacketResult(port if port >= 0 else None, _drop(drop))

    def close(self, tup: FiveTuple, kind: EndKind = EndKind.FIN) -> PacketResult:
        """The packets that end a connection, as the bulk engine sends them: FIN (the pod's
        FIN, the remote's FIN, the pod's last ACK), RST (the pod's RST), RST_SERVER (the
        remote's RST), IDLE (a last packet and its reply). The first packet's result.

        Nothing happens for a connection without a CT entry.
        """
        intern = self.addresses.intern
        key = (intern(tup.src.ip), tup.src.port, intern(tup.dst.ip), tup.dst.port, int(tup.proto))
        port, drop, broken, retries = self._engine.close(key, int(kind))
        return PacketResult(port if port >= 0 else None, _drop(drop), broken, retries)

    def advance(self, until: float) -> None:
        """Move the virtual clock to ``until``, running pending events and GC on the way."""
        self.run(ConnectionBatch.empty(), until)

    # -- bulk ---------------------------------------------------------------------------

    def run(self, batch: ConnectionBatch, until: float) -> None:
        """Start every connection of ``batch`` and process pending events before ``until``.

        Connections still open stay pending for the next call.
        """
        if until < self.now:
            raise DatapathError(f"cannot run back in time: until={until} < now={self.now}")
        if len(batch) and (batch.start[0] < self.now or batch.start[-1] >= until):
            raise DatapathError(
                f"batch starts must lie in [{self.now}, {until}), got "
                f"{batch.start[0]}..{batch.start[-1]}"
            )
        self._engine.run(batch, until)

    # -- views --------------------------------------------------------------------------

    def nat_entries(self) -> Iterator[NatEntry]:
        """Every NAT entry (OUT and IN), least recently used first per family."""
        address = self.addresses.address
        now = self.now
        for (
            _family,
            direction,
            src,
            sport,
            dst,
            dport,
            proto,
            egress,
            port,
            created,
        ) in self._engine.nat_rows():
            p = Proto(proto)
            pod = Endpoint(address(src), sport)
            remote = Endpoint(address(dst), dport)
            snat = Endpoint(address(egress), port)
            if direction == OUT:
                yield NatEntry(Direction.OUT, FiveTuple(p, pod, remote), snat, now - created, True)
            else:
                yield NatEntry(Direction.IN, FiveTuple(p, remote, snat), pod, now - created, True)

    def endpoint_counts(self) -> dict[NatEndpoint, int]:
        """IN entries per {family, proto, egress IP, remote IP, remote port}: nat-stats."""
        return self._endpoints(self._engine.in_endpoint_counts())

    def endpoint_counts_later(self) -> Callable[[], dict[NatEndpoint, int]]:
        """``endpoint_counts`` in two steps: what it needs of the NAT map is copied now;
        the returned call counts that copy, on any thread, while this datapath goes on
        changing (the agent's recount thread). Equal to ``endpoint_counts()`` now.

        The reference engine copies its NAT keys (a C-level list copy of each table's
        keys; tuples of ints, immutable) and counts them when called. The compiled and
        netfilter engines count now, in compiled code or per tuple, both cheap. Addresses
        are looked up when called: the address table only ever appends, and every id in
        the copy was given out before it, so its address is already there for good.
        """
        engine = self._engine
        if isinstance(engine, ReferenceModel):
            keys = engine.nat_keys()
            return lambda: self._endpoints(count_in_endpoints(keys))
        counts = engine.in_endpoint_counts()
        return lambda: self._endpoints(counts)

    def reusable_counts(self) -> dict[NatEndpoint, int] | None:
        """netfilter: per key, the entries whose port a new connection can take over
        (TIME_WAIT, CLOSE); None for Cilium, which never takes a port over."""
        if isinstance(self._engine, NetfilterModel):
            return self._endpoints(self._engine.reusable_endpoint_counts())
        return None

    def _endpoints(
        self, counts: dict[tuple[int, int, int, int, int], int]
    ) -> dict[NatEndpoint, int]:
        address = self.addresses.address
        return {
            NatEndpoint(
                Family.IPV6 if family else Family.IPV4,
                Proto(proto),
                address(egress),
                address(remote),
                rport,
            ): count
            for (family, proto, egress, remote, rport), count in counts.items()
        }
