"""Read the kernel's NAT table: a small ctnetlink client over a raw netlink socket.

nat-stats needs, per source-NATed conntrack entry, only the reply tuple (remote IP and
port -> egress IP) and the original source. The dump asks the kernel to send only
entries with IPS_SRC_NAT set (CTA_STATUS + CTA_STATUS_MASK, Linux 5.15+; older kernels
ignore the filter) and still checks ``reply dst != orig src`` on every entry.

Speed: a dump of half a million entries is ~150 MB of netlink messages. Messages are
received back to back into one large buffer; Python only walks message boundaries, and
numpy gathers the fields at the offsets the kernel's fixed layout puts them (checking
every attribute type on the way). A message whose layout differs goes through a small
generic attribute walker instead, so the fast path is an optimisation, never a guess.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from egressgw.datapath.kernel.netns import call_in
from egressgw.errors import DatapathError
from egressgw.limits import TAKEOVER_TCP_STATES as TAKEOVER_STATE_NAMES
from egressgw.net import COUNTED_PROTOS, Family, NatEndpoint, Proto

NETLINK_NETFILTER = 12
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_MIN_TYPE = 0x10  # below: control messages (NOOP, ERROR, DONE, OVERRUN)
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_GET_STATS_CPU = 4
CT_NEW = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW

# enum ctattr_type, ctattr_tuple, ctattr_ip, ctattr_l4proto
CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_STATUS = 3
CTA_PROTOINFO = 4
CTA_STATUS_MASK = 26
CTA_PROTOINFO_TCP = 1
CTA_PROTOINFO_TCP_STATE = 1
# TCP states whose port nf_nat can take over (egressgw.limits, measured on this kernel).
TAKEOVER_TCP_STATES = tuple(TAKEOVER_STATE_NAMES)
# How many top-level attributes to step over looking for CTA_PROTOINFO on the fast path.
_MAX_TOP_ATTRS = 24
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
IPS_SRC_NAT = 1 << 4
NLA_TYPE_MASK = 0x3FFF

# enum ctattr_stats_cpu: the counters worth reporting.
STATS_CPU_COUNTERS = {
    2: "found",
    4: "invalid",
    8: "insert",
    9: "insert_failed",
    10: "drop",
    11: "early_drop",
    12: "error",
    13: "search_restart",
    14: "clash_resolve",
    15: "chaintoolong",
}
# The counters that mean a new connection could not get a conntrack (or NAT) entry.
ALLOCATION_FAILURE_COUNTERS = ("insert_failed", "drop", "early_drop")

_NLMSG = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_BE32 = struct.Struct(">I")
_NFGEN = struct.Struct("=BBH")

# The protocols nat-stats counts, per address family (net.COUNTED_PROTOS).
_COUNTED: dict[int, tuple[int, ...]] = {
    socket.AF_INET: tuple(sorted(COUNTED_PROTOS[Family.IPV4])),
    socket.AF_INET6: tuple(sorted(COUNTED_PROTOS[Family.IPV6])),
}

RECV_BATCH = 8 << 20  # bytes of messages gathered before numpy processes them
RECV_ROOM = 256 << 10  # keep this much free per recv (a dump skb is at most 32 KiB)
RCVBUF = 4 << 20
RECV_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where the kernel puts each field of a ctnetlink entry, for one address family."""

    addr_len: int
    src_type: int
    dst_type: int

    @property
    def addr_attr(self) -> int:
        return 4 + self.addr_len

    # Offsets within the reply tuple attribute (r):
    # r+0 TUPLE_REPLY, r+4 TUPLE_IP, r+8 SRC hdr, r+12 src, then DST hdr + dst,
    # then TUPLE_PROTO hdr, PROTO_NUM hdr + u8 (padded to 8), SRC_PORT hdr + be16.
    @property
    def dst_hdr(self) -> int:
        return 8 + self.addr_attr

    @property
    def proto_hdr(self) -> int:
        return 8 + 2 * self.addr_attr

    @property
    def num(self) -> int:
        return self.proto_hdr + 4

    @property
    def port_hdr(self) -> int:
        return self.proto_hdr + 12


_LAYOUTS: dict[int, _Layout] = {
    socket.AF_INET: _Layout(4, CTA_IP_V4_SRC, CTA_IP_V4_DST),
    socket.AF_INET6: _Layout(16, CTA_IP_V6_SRC, CTA_IP_V6_DST),
}

# A counted entry's key: reply src address, reply dst address, protocol, remote port.
_Key = tuple[bytes, bytes, int, int]


def _request(msg_type: int, family: int, seq: int, flags: int, attrs: bytes = b"") -> bytes:
    body = _NFGEN.pack(family, 0, 0) + attrs
    header = _NLMSG.pack(_NLMSG.size + len(body), (NFNL_SUBSYS_CTNETLINK << 8) | msg_type,
                         NLM_F_REQUEST | flags, seq, 0)
    return header + body


def _be32_attr(attr_type: int, value: int) -> bytes:
    return _NLA.pack(8, attr_type) + _BE32.pack(value)


class ConntrackReader:
    """A ctnetlink socket in one network namespace (None: the current one).

    The socket is created inside the namespace and stays bound to it, so the reader can
    be used from any thread afterwards. Close it, or use it as a context manager.
    """

    def __init__(self, netns: str | None = None, *, rcvbuf: int = RCVBUF) -> None:
        self.netns = netns
        self._seq = 0
        self._kernel_filter = True
        self._sock = call_in(netns, self._open)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            # As root, go past net.core.rmem_max so a fast dump never overruns the socket.
            self._sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE
        except OSError:
            pass
        # A dump that stops answering becomes an error instead of a hang.
        self._sock.settimeout(RECV_TIMEOUT)
        self._buffer = bytearray(RECV_BATCH + RECV_ROOM)

    @staticmethod
    def _open() -> socket.socket:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            sock.bind((0, 0))
        except OSError as exc:
            raise DatapathError(f"ctnetlink socket: {exc.strerror}") from None
        return sock

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> ConntrackReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- nat-stats ---------------------------------------------------------------------

    def snat_counts(
        self, reusable: dict[NatEndpoint, int] | None = None
    ) -> dict[NatEndpoint, int]:
        """Source-NATed connections per nat-stats key, IPv4 and IPv6.

        ``reusable``, when given, receives per key the entries among them whose port the
        kernel can take over for a new connection (TCP in TAKEOVER_TCP_STATES).
        """
        counts: dict[NatEndpoint, int] = {}
        for family in (socket.AF_INET, socket.AF_INET6):
            family_reusable: dict[_Key, int] = {}
            for (rsrc, rdst, proto, port), n in self._family_counts(
                family, family_reusable
            ).items():
                endpoint = _endpoint(family, rsrc, rdst, proto, port)
                counts[endpoint] = counts.get(endpoint, 0) + n
            if reusable is not None:
                for (rsrc, rdst, proto, port), n in family_reusable.items():
                    endpoint = _endpoint(family, rsrc, rdst, proto, port)
                    reusable[endpoint] = reusable.get(endpoint, 0) + n
        return counts

    def _family_counts(self, family: int, reusable: dict[_Key, int]) -> dict[_Key, int]:
        if self._kernel_filter:
            attrs = _be32_attr(CTA_STATUS, IPS_SRC_NAT) + _be32_attr(CTA_STATUS_MASK, IPS_SRC_NAT)
            try:
                return self._dump_counts(family, attrs, reusable)
            except _KernelRefused as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise DatapathError(f"conntrack dump: {os.strerror(exc.errno)}") from None
                self._kernel_filter = False  # an old kernel: filter on our side only
                reusable.clear()
        try:
            return self._dump_counts(family, b"", reusable)
        except _KernelRefused as exc:
            raise DatapathError(f"conntrack dump: {os.strerror(exc.errno)}") from None

    def _dump_counts(self, family: int, attrs: bytes, reusable: dict[_Key, int] | None = None
                     ) -> dict[_Key, int]:
        counts: dict[_Key, int] = {}
        for buffer, used, offsets in self._dump(IPCTNL_MSG_CT_GET, family, attrs):
            _count_batch(buffer, used, offsets, family, counts, reusable=reusable)
        return counts

    # -- statistics --------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Per-CPU conntrack counters summed (insert_failed, drop, early_drop, ...)."""
        totals = dict.fromkeys(STATS_CPU_COUNTERS.values(), 0)
        try:
            for buffer, _used, offsets in self._dump(
                IPCTNL_MSG_CT_GET_STATS_CPU, socket.AF_UNSPEC, b""
            ):
                _add_stats(buffer, offsets, totals)
        except _KernelRefused as exc:
            raise DatapathError(f"conntrack statistics: {os.strerror(exc.errno)}") from None
        return totals

    def allocation_failures(self) -> dict[str, int]:
        """The counters that rise when a new connection gets no entry or no NAT port."""
        stats = self.stats()
        return {name: stats[name] for name in ALLOCATION_FAILURE_COUNTERS}

    # -- the dump loop -----------------------------------------------------------------

    def _dump(
        self, msg_type: int, family: int, attrs: bytes
    ) -> Iterator[tuple[bytearray, int, npt.NDArray[np.int64]]]:
        """Send one dump request; yield batches (buffer, bytes used, data message offsets).

        The buffer is reused: a batch must be consumed before asking for the next one.
        """
        self._drain()
        self._seq += 1
        seq = self._seq
        try:
            self._sock.send(_request(msg_type, family, seq, NLM_F_DUMP, attrs))
        except OSError as exc:
            raise DatapathError(f"ctnetlink send: {exc.strerror}") from None
        port_id = self._sock.getsockname()[0]
        buffer = self._buffer
        view = memoryview(buffer)
        used = 0
        done = False
        while not done:
            room = len(buffer) - used
            try:
                size = self._sock.recv_into(view[used:], room, socket.MSG_TRUNC)
            except TimeoutError:
                raise DatapathError("ctnetlink dump: no answer from the kernel") from None
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    raise DatapathError(
                        "ctnetlink dump overran the socket buffer (entries changed too fast?)"
                    ) from None
                raise DatapathError(f"ctnetlink receive: {exc.strerror}") from None
            if size > room:
                raise DatapathError(f"ctnetlink message of {size} bytes did not fit {room}")
            end = used + size
            done = _ends_dump(buffer, used, end, seq)
            used = end
            if done or used >= RECV_BATCH:
                yield buffer, used, _message_offsets(buffer, used, seq, port_id)
                used = 0

    def _drain(self) -> None:
        """Discard what an interrupted earlier dump may have left on the socket."""
        self._sock.setblocking(False)
        try:
            while True:
                self._sock.recv_into(self._buffer, len(self._buffer))
        except OSError:  # BlockingIOError: nothing (more) waiting
            pass
        finally:
            self._sock.settimeout(RECV_TIMEOUT)


def _add_stats(
    buffer: bytearray, offsets: npt.NDArray[np.int64], totals: dict[str, int]
) -> None:
    """Add the counters of the per-CPU statistics messages at ``offsets`` to ``totals``."""
    for offset in offsets.tolist():
        length = _NLMSG.unpack_from(buffer, offset)[0]
        for attr_type, start, end in _attrs(buffer, offset + 20, offset + length):
            name = STATS_CPU_COUNTERS.get(attr_type)
            if name is not None and end - start == 4:
                totals[name] += _BE32.unpack_from(buffer, start)[0]


class _KernelRefused(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(os.strerror(code))
        self.errno = code


_NLMSG_HEAD = struct.Struct("=IHHI")
_ERRNO = struct.Struct("=i")


def _walk(buffer: bytearray, start: int, end: int, seq: int, offsets: list[int]) -> bool:
    """Append the offsets of data messages in ``buffer[start:end]``; True at the end of dump."""
    offset = start
    unpack = _NLMSG_HEAD.unpack_from
    append = offsets.append
    while offset < end:
        length, msg_type, _flags, msg_seq = unpack(buffer, offset)
        if length < _NLMSG.size or offset + length > end:
            raise DatapathError(f"malformed netlink message of {length} bytes")
        if msg_seq == seq:
            if msg_type == NLMSG_DONE:
                # A dump that failed half way says so in NLMSG_DONE's payload.
                code = _ERRNO.unpack_from(buffer, offset + _NLMSG.size)[0]
                if code < 0:
                    raise _KernelRefused(-code)
                return True
            if msg_type == NLMSG_ERROR:
                code = _ERRNO.unpack_from(buffer, offset + _NLMSG.size)[0]
                if code:
                    raise _KernelRefused(-code)
                return True
            append(offset)
        offset += (length + 3) & ~3
    return False


def _ends_dump(buffer: bytearray, start: int, end: int, seq: int) -> bool:
    """Whether the chunk just received ends the dump (NLMSG_DONE or an error).

    The kernel puts NLMSG_DONE last in the last chunk and an error alone in its chunk, so
    only the chunk's first header and its last few words need a look; a candidate is
    confirmed by walking that one chunk.
    """
    length, msg_type, _flags, msg_seq = _NLMSG_HEAD.unpack_from(buffer, start)
    if msg_seq == seq and msg_type in (NLMSG_DONE, NLMSG_ERROR):
        return _walk(buffer, start, end, seq, [])
    for tail in range(max(start, end - 64), end - _NLMSG.size + 1, 4):
        length, msg_type, _flags, msg_seq = _NLMSG_HEAD.unpack_from(buffer, tail)
        if msg_type == NLMSG_DONE and msg_seq == seq and tail + length == end:
            return _walk(buffer, start, end, seq, [])
    return False


_ALIGN = np.int64(~3)


def _message_offsets(
    buffer: bytearray, used: int, seq: int, port_id: int
) -> npt.NDArray[np.int64]:
    """Offsets of the data messages in ``buffer[:used]``, found without a Python loop.

    Every message of our dump carries our sequence number and port id at fixed places, so
    numpy finds the candidates; they are accepted only if they chain exactly, each one
    ending where the next begins, from 0 to ``used``. Otherwise walk message by message.
    """
    if used % 4 == 0 and used >= _NLMSG.size:
        words = np.frombuffer(buffer, dtype=np.uint32, count=used // 4)
        hits = np.flatnonzero((words[2:-1] == seq) & (words[3:] == port_id)).astype(np.int64)
        if hits.size:
            starts = hits * 4
            ends = starts + ((words[hits].astype(np.int64) + 3) & _ALIGN)
            if starts[0] == 0 and ends[-1] == used and np.array_equal(ends[:-1], starts[1:]):
                types = words[hits + 1] & 0xFFFF
                data: npt.NDArray[np.int64] = starts[types >= NLMSG_MIN_TYPE]
                return data
    offsets: list[int] = []
    _walk(buffer, 0, used, seq, offsets)
    return np.asarray(offsets, dtype=np.int64)


def _attrs(buffer: bytes | bytearray, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each attribute in ``buffer[start:end]``."""
    while start + 4 <= end:
        length, attr_type = _NLA.unpack_from(buffer, start)
        if length < 4 or start + length > end:
            return
        yield attr_type & NLA_TYPE_MASK, start + 4, start + length
        start += (length + 3) & ~3


def _tuple_fields(buffer: bytearray, start: int, end: int) -> tuple[bytes, bytes, int, int]:
    """(src, dst, proto, src port) of a CTA_TUPLE_* nest; empty bytes when missing."""
    src = dst = b""
    proto = port = 0
    for attr_type, a_start, a_end in _attrs(buffer, start, end):
        if attr_type == CTA_TUPLE_IP:
            for ip_type, i_start, i_end in _attrs(buffer, a_start, a_end):
                if ip_type in (CTA_IP_V4_SRC, CTA_IP_V6_SRC):
                    src = bytes(buffer[i_start:i_end])
                elif ip_type in (CTA_IP_V4_DST, CTA_IP_V6_DST):
                    dst = bytes(buffer[i_start:i_end])
        elif attr_type == CTA_TUPLE_PROTO:
            for p_type, p_start, _ in _attrs(buffer, a_start, a_end):
                if p_type == CTA_PROTO_NUM:
                    proto = buffer[p_start]
                elif p_type == CTA_PROTO_SRC_PORT:
                    port = int.from_bytes(buffer[p_start : p_start + 2], "big")
    return src, dst, proto, port


def _slow_tcp_state(buffer: bytearray, offset: int) -> int:
    """The CTA_PROTOINFO_TCP_STATE of one entry by walking its attributes (-1: none)."""
    length = _NLMSG.unpack_from(buffer, offset)[0]
    for attr_type, start, end in _attrs(buffer, offset + 20, offset + length):
        if attr_type != CTA_PROTOINFO:
            continue
        for info_type, i_start, i_end in _attrs(buffer, start, end):
            if info_type != CTA_PROTOINFO_TCP:
                continue
            for tcp_type, t_start, t_end in _attrs(buffer, i_start, i_end):
                if tcp_type == CTA_PROTOINFO_TCP_STATE and t_end > t_start:
                    return buffer[t_start]
    return -1


def _tcp_states(
    a: npt.NDArray[np.uint8],
    h: npt.NDArray[np.uint16],
    r: npt.NDArray[np.int64],
    msg_end: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    """The TCP state of each entry, stepping over the top-level attributes after the
    reply tuple (at ``r``) to CTA_PROTOINFO; -1 where the expected layout is not found."""
    top = len(a) - 16
    state = np.full(len(r), -1, dtype=np.int64)
    cur = np.minimum(r + ((_u16(h, r) + 3) & ~3), top)
    active = cur + 4 <= msg_end
    for _ in range(_MAX_TOP_ATTRS):
        if not active.any():
            break
        length = _u16(h, cur)
        found = active & ((_u16(h, cur + 2) & NLA_TYPE_MASK) == CTA_PROTOINFO)
        laid_out = (
            found
            & (cur + 13 <= msg_end)
            & ((_u16(h, cur + 6) & NLA_TYPE_MASK) == CTA_PROTOINFO_TCP)
            & (_u16(h, cur + 8) == 5)
            & ((_u16(h, cur + 10) & NLA_TYPE_MASK) == CTA_PROTOINFO_TCP_STATE)
        )
        state[laid_out] = a[cur[laid_out] + 12]
        active &= ~found & (length >= 4)
        cur = np.minimum(np.where(active, cur + ((length + 3) & ~3), cur), top)
        active &= cur + 4 <= msg_end
    return state


def _slow_key(buffer: bytearray, offset: int, family: int) -> _Key | None:
    """The key of one entry found by walking its attributes (any layout)."""
    length = _NLMSG.unpack_from(buffer, offset)[0]
    orig: tuple[bytes, bytes, int, int] | None = None
    reply: tuple[bytes, bytes, int, int] | None = None
    for attr_type, start, end in _attrs(buffer, offset + 20, offset + length):
        if attr_type == CTA_TUPLE_ORIG:
            orig = _tuple_fields(buffer, start, end)
        elif attr_type == CTA_TUPLE_REPLY:
            reply = _tuple_fields(buffer, start, end)
    if orig is None or reply is None:
        return None
    rsrc, rdst, proto, port = reply
    addr_len = _LAYOUTS[family].addr_len
    if len(rsrc) != addr_len or len(rdst) != addr_len or rdst == orig[0]:
        return None
    if proto not in _COUNTED[family]:
        return None
    return (rsrc, rdst, proto, port if Proto(proto).has_ports else 0)


def _u16(h: npt.NDArray[np.uint16], idx: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The host-order u16 at each (even) byte index: netlink headers are in host order."""
    values: npt.NDArray[np.int64] = h[idx >> 1].astype(np.int64)
    return values


def _gather(
    a: npt.NDArray[np.uint8], idx: npt.NDArray[np.int64], width: int
) -> npt.NDArray[np.uint8]:
    rows: npt.NDArray[np.uint8] = a[idx[:, None] + np.arange(width, dtype=np.int64)]
    return rows


def _count_batch(
    buffer: bytearray,
    used: int,
    offsets: npt.NDArray[np.int64],
    family: int,
    counts: dict[_Key, int],
    *,
    reusable: dict[_Key, int] | None = None,
) -> None:
    """Add the masqueraded entries among the messages at ``offsets`` to ``counts``, and
    those whose port the kernel can take over (TAKEOVER_TCP_STATES) to ``reusable``."""
    if not offsets.size:
        return
    layout = _LAYOUTS[family]
    a = np.frombuffer(buffer, dtype=np.uint8)
    # Indices are clipped into the buffer; entries whose checks fail are parsed slowly.
    limit = len(buffer) - (layout.port_hdr + 16)
    h = a.view(np.uint16)
    offs = offsets
    msg_end = offs + np.frombuffer(buffer, dtype=np.uint32)[offs >> 2].astype(np.int64)
    o = offs + 20
    olen = _u16(h, o)
    r = np.minimum(o + ((olen + 3) & ~3), limit)
    ok = (
        ((_u16(h, o + 2) & NLA_TYPE_MASK) == CTA_TUPLE_ORIG)
        & ((_u16(h, o + 6) & NLA_TYPE_MASK) == CTA_TUPLE_IP)
        & (_u16(h, o + 8) == layout.addr_attr)
        & (_u16(h, o + 10) == layout.src_type)
        & (r + layout.port_hdr + 8 <= msg_end)
        & ((_u16(h, r + 2) & NLA_TYPE_MASK) == CTA_TUPLE_REPLY)
        & ((_u16(h, r + 6) & NLA_TYPE_MASK) == CTA_TUPLE_IP)
        & (_u16(h, r + 8) == layout.addr_attr)
        & (_u16(h, r + 10) == layout.src_type)
        & (_u16(h, r + layout.dst_hdr) == layout.addr_attr)
        & (_u16(h, r + layout.dst_hdr + 2) == layout.dst_type)
        & ((_u16(h, r + layout.proto_hdr + 2) & NLA_TYPE_MASK) == CTA_TUPLE_PROTO)
        & (_u16(h, r + layout.num) == 5)
        & (_u16(h, r + layout.num + 2) == CTA_PROTO_NUM)
    )
    proto = a[r + layout.num + 4].astype(np.int64)
    has_ports = (proto == Proto.TCP) | (proto == Proto.UDP)
    port_ok = (_u16(h, r + layout.port_hdr) == 6) & (
        _u16(h, r + layout.port_hdr + 2) == CTA_PROTO_SRC_PORT
    )
    ok &= ~has_ports | port_ok
    width = layout.addr_len
    orig_src = _gather(a, o + 12, width)
    reply_src = _gather(a, r + 12, width)
    reply_dst = _gather(a, r + layout.dst_hdr + 4, width)
    masqueraded = np.any(orig_src != reply_dst, axis=1)
    take = ok & masqueraded & np.isin(proto, _COUNTED[family])
    port = np.where(has_ports, a[r + layout.port_hdr + 4].astype(np.int64) * 256
                    + a[r + layout.port_hdr + 5], 0)

    def add(mask: npt.NDArray[np.bool_], into: dict[_Key, int]) -> None:
        rows = np.hstack(
            [
                reply_src[mask],
                reply_dst[mask],
                proto[mask, None].astype(np.uint8),
                (port[mask, None] >> 8).astype(np.uint8),
                (port[mask, None] & 0xFF).astype(np.uint8),
            ]
        )
        key_len = rows.shape[1]
        keys = np.ascontiguousarray(rows).view(np.dtype((np.void, key_len))).ravel()
        unique, n = np.unique(keys, return_counts=True)
        for raw, count in zip(unique.tolist(), n.tolist(), strict=True):
            key = (
                raw[:width],
                raw[width : 2 * width],
                raw[2 * width],
                (raw[2 * width + 1] << 8) | raw[2 * width + 2],
            )
            into[key] = into.get(key, 0) + count

    if take.any():
        add(take, counts)
    tcp = take & (proto == Proto.TCP)
    if reusable is not None and tcp.any():
        state = np.full(len(offs), -1, dtype=np.int64)
        state[tcp] = _tcp_states(a, h, r[tcp], msg_end[tcp])
        for index in np.flatnonzero(tcp & (state < 0)).tolist():
            state[index] = _slow_tcp_state(buffer, int(offsets[index]))
        takeover = tcp & np.isin(state, TAKEOVER_TCP_STATES)
        if takeover.any():
            add(takeover, reusable)
    for index in np.flatnonzero(~ok).tolist():
        slow = _slow_key(buffer, int(offsets[index]), family)
        if slow is not None:
            counts[slow] = counts.get(slow, 0) + 1
            if (reusable is not None and slow[2] == Proto.TCP
                    and _slow_tcp_state(buffer, int(offsets[index])) in TAKEOVER_TCP_STATES):
                reusable[slow] = reusable.get(slow, 0) + 1


def _endpoint(family: int, rsrc: bytes, rdst: bytes, proto: int, port: int) -> NatEndpoint:
    return NatEndpoint(
        Family.IPV4 if family == socket.AF_INET else Family.IPV6,
        Proto(proto),
        ipaddress.ip_address(rdst),
        ipaddress.ip_address(rsrc),
        port,
    )


def snat_counts(netns: str | None = None) -> Mapping[NatEndpoint, int]:
    """One pass: source-NATed connections per nat-stats key in ``netns``."""
    with ConntrackReader(netns) as reader:
        return reader.snat_counts()


def conntrack_stats(netns: str | None = None) -> Mapping[str, int]:
    """Per-CPU conntrack counters of ``netns``, summed."""
    with ConntrackReader(netns) as reader:
        return reader.stats()
