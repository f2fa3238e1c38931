"""The program's ``nat_fill_up`` signals, read from its BPF ring buffer.

The program writes an 8-byte ``{signal_nr, proto}`` record when a port search needed more
than the version's SNAT_SIGNAL_THRES tries (Cilium sends the same signal through a perf
buffer, bpf/lib/signal.h). A BPF_MAP_TYPE_RINGBUF is read by mapping it: the consumer
position page (read-write), then the producer position page and the data area twice over
(read-only); each record has an 8-byte header {len | BUSY/DISCARD bits, page offset} and
is padded to 8 bytes (kernel/bpf/ringbuf.c).
"""

from __future__ import annotations

import mmap
import struct

from .layout import SIGNAL_MSG
from .syscall import BpfMap

_BUSY = 1 << 31
_DISCARD = 1 << 30
_HEADER = 8


class SignalReader:
    """Consumes the ring buffer's records; ``read()`` returns the new ones."""

    def __init__(self, ringbuf: BpfMap) -> None:
        self.size = ringbuf.info.max_entries
        page = mmap.PAGESIZE
        self._consumer = mmap.mmap(ringbuf.fd, page, mmap.MAP_SHARED,
                                   mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._producer = mmap.mmap(ringbuf.fd, page + 2 * self.size, mmap.MAP_SHARED,
                                   mmap.PROT_READ, offset=page)
        self._data = page

    def read(self) -> list[tuple[int, int]]:
        """New (signal number, proto) records since the last read."""
        out: list[tuple[int, int]] = []
        cons = struct.unpack_from("<Q", self._consumer, 0)[0]
        prod = struct.unpack_from("<Q", self._producer, 0)[0]
        mask = self.size - 1
        while cons < prod:
            at = self._data + (cons & mask)
            length, _pgoff = struct.unpack_from("<II", self._producer, at)
            if length & _BUSY:
                break
            if not length & _DISCARD and (length & ~(_BUSY | _DISCARD)) >= SIGNAL_MSG.size:
                out.append(SIGNAL_MSG.unpack_from(self._producer, at + _HEADER))
            cons += (_HEADER + (length & ~(_BUSY | _DISCARD)) + 7) & ~7
        struct.pack_into("<Q", self._consumer, 0, cons)
        return out

    def close(self) -> None:
        self._consumer.close()
        self._producer.close()
