"""Connections as numpy columns, the shape the model datapath's ConnectionBatch takes.

Addresses here are small integers into the run's ``AddressBook`` (so a workload is
generated once, independent of any datapath); egress is an index into the run's
``EgressTable``. ``egressgw.sim.simulate`` maps both to the datapath's interned ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt

from egressgw.datapath.model.types import BATCH_DTYPES
from egressgw.net import IPAddress


class AddressBook:
    """Every address a run mentions, each with a stable small integer."""

    def __init__(self) -> None:
        self.ips: list[IPAddress] = []
        self._index: dict[IPAddress, int] = {}

    def add(self, ip: IPAddress) -> int:
        index = self._index.get(ip)
        if index is None:
            index = self._index[ip] = len(self.ips)
            self.ips.append(ip)
        return index

    def __len__(self) -> int:
        return len(self.ips)


@dataclass(slots=True)
class Flows:
    """Connections, one per row, sorted by start time.

    The columns (names and dtypes) are the model's ``ConnectionBatch`` columns; only the
    address and egress values differ in meaning (run-wide indexes, not datapath ids).
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
    retries: npt.NDArray[np.uint8]
    rto: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return len(self.start)

    @classmethod
    def empty(cls) -> Flows:
        return cls(**{name: np.empty(0, dtype) for name, dtype in BATCH_DTYPES.items()})

    def take(self, index: npt.NDArray[np.intp] | npt.NDArray[np.bool_] | slice) -> Flows:
        return Flows(*(getattr(self, f.name)[index] for f in fields(self)))

    @classmethod
    def concat(cls, parts: Sequence[Flows]) -> Flows:
        """Join parts and sort by start time (stable, so equal starts keep part order)."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        joined = Flows(*(np.concatenate([getattr(p, f.name) for p in parts])
                         for f in fields(cls)))
        return joined.take(np.argsort(joined.start, kind="stable"))
