"""Results, counters and the connection batch of the model datapath."""

from __future__ import annotations

import enum
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
    """How a connection ends: FIN or RST close it, IDLE leaves it to the CT timeout."""

    FIN = 0
    RST = 1
    IDLE = 2


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
}


@dataclass(frozen=True, slots=True)
class ConnectionBatch:
    """Connections as columns, one row per connection, sorted by ``start``.

    Addresses are ids from ``ModelDatapath.intern``. ``duration`` is np.inf for a
    connection held open; ``end`` is an EndKind; ``keepalive`` the seconds between packets
    that refresh its NAT and CT entries (0 = none).
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

    def __post_init__(self) -> None:
        n = len(self.start)
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
        if bool(np.any(self.end > EndKind.IDLE)):
            raise ValueError("ConnectionBatch.end: values must be 0 (FIN), 1 (RST) or 2 (IDLE)")
        if bool(np.any(np.isnan(self.duration))) or bool(np.any(self.duration < 0)):
            raise ValueError("ConnectionBatch.duration: must be >= 0 (np.inf = held open)")
        if bool(np.any(~np.isfinite(self.keepalive))) or bool(np.any(self.keepalive < 0)):
            raise ValueError("ConnectionBatch.keepalive: must be finite and >= 0")

    def __len__(self) -> int:
        return len(self.start)

    @classmethod
    def empty(cls) -> ConnectionBatch:
        return cls(**{name: np.zeros(0, dtype) for name, dtype in BATCH_DTYPES.items()})

    @classmethod
    def from_rows(
        cls,
        rows: list[tuple[float, float, int, int, int, int, int, int, int, float]],
    ) -> ConnectionBatch:
        """Build from (start, duration, end, src, sport, dst, dport, proto, egress, keepalive)."""
        columns = list(zip(*rows, strict=True)) if rows else [()] * len(BATCH_DTYPES)
        return cls(
            **{
                name: np.array(col, dtype=dtype)
                for (name, dtype), col in zip(BATCH_DTYPES.items(), columns, strict=True)
            }
        )
