"""Fill a conntrack table with source-NATed entries over ctnetlink (benchmarks, tests).

Each entry is created like ``conntrack -I ... --src-nat IP:PORT``: the original tuple
plus a CTA_NAT_SRC request, so the kernel itself sets up the NAT (IPS_SRC_NAT and the
translated reply tuple) exactly as for real traffic. A hand-written reply tuple would not
set that flag. Messages are sent many per ``sendto`` so half a million entries take
seconds, where one ``conntrack -I`` process per entry would take many minutes.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from egressgw.datapath.kernel.conntrack import (
    NETLINK_NETFILTER,
    NFNL_SUBSYS_CTNETLINK,
    NLM_F_REQUEST,
)
from egressgw.datapath.kernel.netns import call_in
from egressgw.errors import DatapathError
from egressgw.net import IPAddress, Proto, parse_ip

IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_DELETE = 2
NLM_F_CREATE = 0x400
NLM_F_EXCL = 0x200
NLA_F_NESTED = 0x8000
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_PROTOINFO, CTA_NAT_SRC, CTA_TIMEOUT = 1, 2, 4, 6, 7
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE = 4, 5, 6
CTA_PROTO_ICMPV6_ID, CTA_PROTO_ICMPV6_TYPE, CTA_PROTO_ICMPV6_CODE = 7, 8, 9
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
CTA_NAT_V4_MINIP, CTA_NAT_V4_MAXIP, CTA_NAT_PROTO = 1, 2, 3
CTA_NAT_V6_MINIP, CTA_NAT_V6_MAXIP = 4, 5
CTA_PROTONAT_PORT_MIN, CTA_PROTONAT_PORT_MAX = 1, 2
SEND_CHUNK = 128 << 10


@dataclass(frozen=True, slots=True)
class SnatEntry:
    """A connection ``src:sport -> dst:dport`` source-NATed to ``egress:egress_port``.

    For ICMP echo, ``sport`` is the echo identifier and the ports are otherwise unused.
    """

    proto: Proto
    src: IPAddress
    sport: int
    dst: IPAddress
    dport: int
    egress: IPAddress | None
    egress_port: int = 0
    # TCP only: the conntrack state to create it in (TCP_CONNTRACK_*, ESTABLISHED = 3).
    tcp_state: int = 3


def _attr(attr_type: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, attr_type) + payload + b"\0" * (-length & 3)


def _nest(attr_type: int, *children: bytes) -> bytes:
    return _attr(attr_type | NLA_F_NESTED, b"".join(children))


def _tuple(attr_type: int, entry: SnatEntry, *, reverse: bool) -> bytes:
    v6 = entry.src.version == 6
    src, dst = (entry.dst, entry.src) if reverse else (entry.src, entry.dst)
    sport, dport = (entry.dport, entry.sport) if reverse else (entry.sport, entry.dport)
    ip = _nest(CTA_TUPLE_IP, _attr(3 if v6 else 1, src.packed), _attr(4 if v6 else 2, dst.packed))
    if entry.proto.has_ports:
        l4 = [_attr(CTA_PROTO_SRC_PORT, struct.pack(">H", sport)),
              _attr(CTA_PROTO_DST_PORT, struct.pack(">H", dport))]
    else:
        request, reply = (128, 129) if v6 else (8, 0)
        ids = (CTA_PROTO_ICMPV6_ID, CTA_PROTO_ICMPV6_TYPE, CTA_PROTO_ICMPV6_CODE) if v6 else (
            CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE)
        l4 = [_attr(ids[0], struct.pack(">H", entry.sport)),
              _attr(ids[1], bytes([reply if reverse else request])),
              _attr(ids[2], b"\0")]
    proto = _nest(CTA_TUPLE_PROTO, _attr(CTA_PROTO_NUM, bytes([entry.proto])), *l4)
    return _nest(attr_type, ip, proto)


def new_message(entry: SnatEntry, seq: int, *, timeout: int = 3600) -> bytes:
    """The IPCTNL_MSG_CT_NEW message creating ``entry``."""
    if entry.src.version != entry.dst.version:
        raise ValueError("source and destination differ in family")
    family = socket.AF_INET6 if entry.src.version == 6 else socket.AF_INET
    attrs = [
        _tuple(CTA_TUPLE_ORIG, entry, reverse=False),
        _tuple(CTA_TUPLE_REPLY, entry, reverse=True),
        _attr(CTA_TIMEOUT, struct.pack(">I", timeout)),
    ]
    if entry.proto is Proto.TCP:
        attrs.append(_nest(CTA_PROTOINFO, _nest(
            CTA_PROTOINFO_TCP, _attr(CTA_PROTOINFO_TCP_STATE, bytes([entry.tcp_state])))))
    if entry.egress is not None:
        v6 = entry.egress.version == 6
        nat = [_attr(CTA_NAT_V6_MINIP if v6 else CTA_NAT_V4_MINIP, entry.egress.packed),
               _attr(CTA_NAT_V6_MAXIP if v6 else CTA_NAT_V4_MAXIP, entry.egress.packed)]
        if entry.proto.has_ports and entry.egress_port:
            port = struct.pack(">H", entry.egress_port)
            nat.append(_nest(CTA_NAT_PROTO, _attr(CTA_PROTONAT_PORT_MIN, port),
                             _attr(CTA_PROTONAT_PORT_MAX, port)))
        attrs.append(_nest(CTA_NAT_SRC, *nat))
    body = struct.pack("=BBH", family, 0, 0) + b"".join(attrs)
    header = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW,
                         NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL, seq, 0)
    return header + body


def delete_message(entry: SnatEntry, seq: int) -> bytes:
    """The IPCTNL_MSG_CT_DELETE message removing the entry of ``entry``'s original tuple
    (like ``conntrack -D`` with its addresses and ports; ``egress`` is not needed)."""
    family = socket.AF_INET6 if entry.src.version == 6 else socket.AF_INET
    body = struct.pack("=BBH", family, 0, 0) + _tuple(CTA_TUPLE_ORIG, entry, reverse=False)
    header = struct.pack("=IHHII", 16 + len(body),
                         (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST,
                         seq, 0)
    return header + body


def fill(entries: Iterable[SnatEntry], *, netns: str | None = None, timeout: int = 3600) -> int:
    """Create every entry in ``netns``; return how many the kernel refused (e.g. EEXIST)."""
    return _send((new_message(entry, seq, timeout=timeout)
                  for seq, entry in enumerate(entries, start=1)), netns)


def forget(entries: Iterable[SnatEntry], *, netns: str | None = None) -> int:
    """Delete the entries of these original tuples in ``netns``; return how many the
    kernel refused (ENOENT: no such entry)."""
    return _send((delete_message(entry, seq) for seq, entry in enumerate(entries, start=1)),
                 netns)


def _send(messages: Iterable[bytes], netns: str | None) -> int:
    """Send ctnetlink requests many per ``sendto``; count the error answers."""

    def make() -> socket.socket:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)

    try:
        sock = call_in(netns, make)
    except OSError as exc:
        raise DatapathError(f"ctnetlink socket: {exc.strerror}") from None
    refused = 0
    with sock:
        sock.bind((0, 0))
        sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: room for errors
        chunk: list[bytes] = []
        size = 0
        for message in messages:
            chunk.append(message)
            size += len(message)
            if size >= SEND_CHUNK:
                sock.send(b"".join(chunk))
                refused += _drain_errors(sock)
                chunk, size = [], 0
        if chunk:
            sock.send(b"".join(chunk))
        refused += _drain_errors(sock)
    return refused


def _drain_errors(sock: socket.socket) -> int:
    """Count the error answers waiting on the socket (successes send none without ACK)."""
    refused = 0
    while True:
        try:
            data = sock.recv(1 << 20, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return refused
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                raise DatapathError("too many refused entries to count") from None
            raise DatapathError(f"ctnetlink: {os.strerror(exc.errno or 0)}") from None
        offset = 0
        while offset + 20 <= len(data):
            length, msg_type = struct.unpack_from("=IH", data, offset)
            if msg_type == 2 and struct.unpack_from("=i", data, offset + 16)[0] != 0:
                refused += 1
            offset += (length + 3) & ~3 or len(data)


def synthetic_entries(
    count: int, *, egress_ips: Iterable[str], remotes: Iterable[str], remote_port: int = 443,
    first_port: int = 1024,
) -> list[SnatEntry]:
    """``count`` TCP connections spread over egress IPs and remote IPs, all on one port.

    Pod addresses count up inside 192.0.2.0/24 (or 2001:db8:1::/64 for IPv6 remotes);
    each {egress IP, remote} tuple hands out distinct egress ports from 32768 up.
    """
    egress = [parse_ip(e) for e in egress_ips]
    remote = [parse_ip(r) for r in remotes]
    pods = {4: ipaddress.ip_address("192.0.2.0"), 6: ipaddress.ip_address("2001:db8:1::")}
    entries: list[SnatEntry] = []
    used: dict[tuple[int, int], int] = {}
    for i in range(count):
        r = remote[i % len(remote)]
        e_choices = [e for e in egress if e.version == r.version]
        e = e_choices[(i // len(remote)) % len(e_choices)]
        key = (egress.index(e), remote.index(r))
        port = 32768 + used.get(key, 0)
        used[key] = used.get(key, 0) + 1
        if port > 65535:
            raise ValueError(f"more than 32768 connections to {r} behind {e}")
        pod = pods[r.version] + 10 + (i % 200)
        sport = first_port + (i // 200) % (65536 - first_port)
        entries.append(SnatEntry(Proto.TCP, pod, sport, r, remote_port, e, port))
    return entries
