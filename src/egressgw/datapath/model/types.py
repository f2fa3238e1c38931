"""Results, counters and the connection batch of the model datapath."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


class DropReason(enum.IntEnum):
    """Cilium drop reasons the model produces (bpf/lib/common.h, pkg/monitor/api)."""

    NAT_NO_MAPPING = 167
    # The netfilter model's drops (not Cilium codes; conntrack -S names them).
    NF_INSERT_FAILED = 1001
    NF_TABLE_FULL = 1002

    @property
    def text(self) -> str:
        """The ``reason`` label of ``cilium_drop_count_total``."""
        return _DROP_TEXT[self]


_DROP_TEXT = {
    DropReason.NAT_NO_MAPPING: "No mapping for NAT masquerade",
    DropReason.NF_INSERT_FAILED: "conntrack insert_failed (no free NAT port)",
    DropReason.NF_TABLE_FULL: "conntrack table full",
}


class EndKind(enum.IntEnum):
    """How a connection ends (the packets each sends are in docs/model.md).

    FIN: both sides send FIN (the pod first), then the pod's last ACK. RST: the pod sends
    an RST (an aborting client). IDLE: a last packet and its reply, then nothing until the
    CT timeout. RST_SERVER: the remote sends an RST.
    """

    FIN = 0
    RST = 1
    IDLE = 2
    RST_SERVER = 3


class TcpFlags(enum.IntFlag):
    """The TCP flags of a packet the model is given (ACK is implied on all but a SYN).

    Only SYN, FIN and RST change Cilium's CT entry (``ct_tcp_select_action``).
    """

    NONE = 0
    SYN = 1
    FIN = 2
    RST = 4


@dataclass(frozen=True, slots=True)
class ConnectResult:
    """The first packet of a connection: the allocated source port, or a drop.

    ``tries`` is Cilium's ``retries`` count: collisions before the insert succeeded
    (0 = the first port was free), equal to SNAT_COLLISION_RETRIES when all failed; 0 when
    an existing OUT entry was reused.
    """

    port: int | None
    drop: DropReason | None
    tries: int

    @property
    def ok(self) -> bool:
        return self.drop is None


@dataclass(frozen=True, slots=True)
class PacketResult:
    """A later packet: ``broken`` when the OUT entry was gone and a new port was taken."""

    port: int | None
    drop: DropReason | None
    broken: bool = False
    tries: int = 0

    @property
    def ok(self) -> bool:
        return self.drop is None


# The extra connect latency histogram: 0.1 s bins up to one hour.
LATENCY_STEP = 0.1
LATENCY_BINS = 36001


@dataclass(slots=True)
class ModelCounters:
    """Cumulative counters since the datapath was created."""

    attempted: int = 0
    established: int = 0
    closed: int = 0
    allocations: int = 0
    drops: dict[int, int] = field(default_factory=dict)
    evictions_out: int = 0
    evictions_in: int = 0
    broken: int = 0
    reply_drops: int = 0
    signals: int = 0
    gc_runs: int = 0
    # netfilter: ports taken over from TIME_WAIT/CLOSE entries.
    takeovers: int = 0
    tries: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(1, np.int64))
    # Retransmissions of a dropped first packet (the bulk engine's clients retry).
    retransmits: int = 0
    connect_failed: int = 0
    # Connections established after their first packet was dropped, by the extra time
    # they waited for a port, in LATENCY_STEP bins (the last bin holds everything above).
    delayed: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(LATENCY_BINS, np.int64)
    )

    @staticmethod
    def reason_text(code: int) -> str:
        """The drop reason text for a code in ``drops``."""
        return DropReason(code).text

    def as_dict(self) -> dict[str, object]:
        """Plain values, for JSON and for comparing two datapaths."""
        return {
            "attempted": self.attempted,
            "established": self.established,
            "closed": self.closed,
            "allocations": self.allocations,
            "drops": dict(sorted(self.drops.items())),
            "evictions_out": self.evictions_out,
            "evictions_in": self.evictions_in,
            "broken": self.broken,
            "reply_drops": self.reply_drops,
            "signals": self.signals,
            "gc_runs": self.gc_runs,
            "takeovers": self.takeovers,
            "tries": [int(x) for x in self.tries],
            "retransmits": self.retransmits,
            "connect_failed": self.connect_failed,
            "delayed": {int(i): int(self.delayed[i]) for i in np.flatnonzero(self.delayed)},
        }


BATCH_DTYPES: dict[str, type[np.generic]] = {
    "start": np.float64,
    "duration": np.float64,
    "end": np.uint8,
    "src": np.uint32,
    "sport": np.uint16,
    "dst": np.uint32,
    "dport": np.uint16,
    "proto": np.uint8,
    "egress": np.uint32,
    "keepalive": np.float32,
    "retries": np.uint8,
    "rto": np.float32,
}


@dataclass(frozen=True, slots=True)
class ConnectionBatch:
    """Connections as columns, one row per connection, sorted by ``start``.

    Addresses are ids from ``ModelDatapath.intern``. ``duration`` is np.inf for a
    connection held open; ``end`` is an EndKind; ``keepalive`` the seconds between packets
    that refresh its NAT and CT entries (0 = none). ``retries``: how many times the client
    retransmits a dropped first packet, ``rto`` seconds after it, then (TCP only, as Linux
    backs off) twice as long each time; both may be left empty (no retransmissions).
    """

    start: npt.NDArray[np.float64]
    duration: npt.NDArray[np.float64]
    end: npt.NDArray[np.uint8]
    src: npt.NDArray[np.uint32]
    sport: npt.NDArray[np.uint16]
    dst: npt.NDArray[np.uint32]
    dport: npt.NDArray[np.uint16]
    proto: npt.NDArray[np.uint8]
    egress: npt.NDArray[np.uint32]
    keepalive: npt.NDArray[np.float32]
    retries: npt.NDArray[np.uint8] = field(default_factory=lambda: np.zeros(0, np.uint8))
    rto: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, np.float32))

    def __post_init__(self) -> None:
        n = len(self.start)
        for name in ("retries", "rto"):
            if n and len(getattr(self, name)) == 0:  # not given: no retransmissions
                object.__setattr__(self, name, np.zeros(n, BATCH_DTYPES[name]))
        for name, dtype in BATCH_DTYPES.items():
            column = getattr(self, name)
            if not isinstance(column, np.ndarray) or column.ndim != 1:
                raise ValueError(f"ConnectionBatch.{name}: expected a 1-d numpy array")
            if column.dtype != dtype or not column.flags.c_contiguous:
                # One layout and dtype per column, so the kernel compiles once.
                object.__setattr__(self, name, np.ascontiguousarray(column, dtype=dtype))
            if len(column) != n:
                raise ValueError(f"ConnectionBatch.{name}: {len(column)} rows, expected {n}")
        if n and bool(np.any(np.diff(self.start) < 0)):
            raise ValueError("ConnectionBatch.start: rows must be sorted by start")
        if bool(np.any(self.end > EndKind.RST_SERVER)):
            raise ValueError(
                "ConnectionBatch.end: values must be 0 (FIN), 1 (RST), 2 (IDLE) or 3 (RST_SERVER)"
            )
        if bool(np.any(np.isnan(self.duration))) or bool(np.any(self.duration < 0)):
            raise ValueError("ConnectionBatch.duration: must be >= 0 (np.inf = held open)")
        if bool(np.any(~np.isfinite(self.keepalive))) or bool(np.any(self.keepalive < 0)):
            raise ValueError("ConnectionBatch.keepalive: must be finite and >= 0")
        if bool(np.any(~np.isfinite(self.rto))) or bool(np.any(self.rto[self.retries > 0] <= 0)):
            raise ValueError("ConnectionBatch.rto: must be finite and > 0 where retries > 0")

    def __len__(self) -> int:
        return len(self.start)

    @classmethod
    def empty(cls) -> ConnectionBatch:
        return cls(**{name: np.zeros(0, dtype) for name, dtype in BATCH_DTYPES.items()})

    @classmethod
    def from_rows(
        cls,
        rows: Sequence[tuple[float, ...]],
    ) -> ConnectionBatch:
        """Build from (start, duration, end, src, sport, dst, dport, proto, egress, keepalive)
        rows, optionally followed by (retries, rto)."""
        names = list(BATCH_DTYPES)
        width = len(rows[0]) if rows else len(names)
        columns = list(zip(*rows, strict=True)) if rows else [()] * width
        return cls(
            **{
                name: np.array(col, dtype=BATCH_DTYPES[name])
                for name, col in zip(names[:width], columns, strict=True)
            }
        )
