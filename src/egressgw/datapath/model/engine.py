"""What the ``ModelDatapath`` facade needs from an implementation, at the level of ids."""

from __future__ import annotations

from typing import Protocol

from egressgw.datapath.model.reference import ConnKey, NatRow
from egressgw.datapath.model.types import ConnectionBatch, ModelCounters


class Engine(Protocol):
    """Both the reference implementation and the compiled kernel offer this."""

    @property
    def now(self) -> float: ...

    @property
    def counters(self) -> ModelCounters: ...

    def connect(self, key: ConnKey, egress: int) -> tuple[int, int, int]:
        """A first packet (TCP: a SYN): (port or -1, drop code or 0, retries)."""

    def first_exchange(self, key: ConnKey, egress: int) -> tuple[int, int, int]:
        """A first exchange (TCP: SYN, SYN-ACK, ACK), like connect."""

    def send(self, key: ConnKey, egress: int, flags: int) -> tuple[int, int, bool, int]:
        """A packet from the pod with TcpFlags: (port or -1, drop code or 0, broken, retries)."""

    def reply(self, key: ConnKey, flags: int) -> tuple[int, int]:
        """A packet from the remote with TcpFlags: (port or -1, drop code or 0)."""

    def close(self, key: ConnKey, kind: int) -> tuple[int, int, bool, int]:
        """The packets of an EndKind via the connection's egress; the first one's result."""

    def run(self, batch: ConnectionBatch, until: float) -> None: ...

    def nat_rows(self) -> list[NatRow]:
        """Every NAT entry, per family in LRU order (least recently used first)."""

    def in_endpoint_counts(self) -> dict[tuple[int, int, int, int, int], int]:
        """IN entries per (family, proto, egress id, remote id, remote port)."""

    def sync_rng(self) -> None:
        """Bring the injected ``random.Random`` up to date with the engine's draws."""
