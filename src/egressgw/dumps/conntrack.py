"""``conntrack -L``: the Linux conntrack table in conntrack-tools' default text format.

Lines look like (conntrack-tools 1.4, ``-o extended`` adds an ``ipv4 2`` prefix)::

    tcp      6 431999 ESTABLISHED src=192.0.2.2 dst=198.51.100.2 sport=41000 dport=80 \
src=198.51.100.2 dst=203.0.113.1 sport=80 dport=41000 [ASSURED] mark=0 use=1
    udp      17 29 src=192.0.2.2 dst=198.51.100.2 sport=5353 dport=53 [UNREPLIED] \
src=198.51.100.2 dst=203.0.113.1 sport=53 dport=5353 mark=0 use=1
    icmp     1 29 src=192.0.2.2 dst=198.51.100.2 type=8 code=0 id=7 \
src=198.51.100.2 dst=203.0.113.1 type=0 code=0 id=7 mark=0 use=1

A connection is masqueraded when the reply tuple's destination differs from the original
source. Then the reply destination is the egress IP and the reply source the remote
endpoint (ip and port; port 0 for ICMP). Other protocols (sctp, gre, ...) are valid lines
that are not counted, as are connections that were not source-NATed. conntrack prints its
``N flow entries have been shown.`` summary on stderr; it is accepted if it was captured.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterator

from egressgw.dumps.base import DumpCounts, bad_line, normalize
from egressgw.net import (
    Direction,
    Endpoint,
    Family,
    FiveTuple,
    NatEndpoint,
    NatEntry,
    Proto,
    parse_ip,
)

FORMAT = "conntrack"

_PORTS = r"(?:sport=(\d+) dport=(\d+)|type=\d+ code=\d+ id=(\d+))"
_COUNTED = (
    r"(tcp|udp|icmpv6|icmp) +\d+ +\d+ (?:[A-Z_]+ )?"
    r"src=(\S+) dst=(\S+) " + _PORTS + r" (?:zone-orig=\d+ )?(?:\[UNREPLIED\] )?"
    r"src=(\S+) dst=(\S+) " + _PORTS + r"(?: [^\n]*)?"
)
_OTHER = r"(?!(?:tcp|udp|icmpv6|icmp) )[a-z][a-z0-9-]* +\d+ [^\n]*"
_SUMMARY = r"conntrack v[\d.]+ \(conntrack-tools\): \d+ flow entr(?:y|ies) ha(?:s|ve) been shown\."
_LINE = r"(?:ipv[46] +\d+ +)?(?:" + _COUNTED + r"|" + _OTHER + r")|" + _SUMMARY
_LINES = re.compile(r"^(?:" + _LINE + r")?$", re.MULTILINE)
_ONE = re.compile(_LINE)

# Groups of _COUNTED: proto, orig src, orig dst, orig sport, orig dport, orig id,
# reply src, reply dst, reply sport, reply dport, reply id ('' when absent).
_Groups = tuple[str, ...]
_PROTO, _OSRC, _ODST, _OSPORT, _ODPORT, _OID, _RSRC, _RDST, _RSPORT, _RDPORT, _RID = range(11)


def _int(text: str) -> int:
    return int(text) if text else 0


def count_conntrack(data: bytes, *, source: str, skip_invalid: bool = False) -> DumpCounts:
    """Connections per NatEndpoint among the masqueraded connections of a ``conntrack -L``."""
    text = normalize(data).decode("utf-8", "replace")
    lines = text.count("\n")
    # Without the final newline, so that "^$" cannot match once more at the very end.
    rows = _LINES.findall(text, 0, len(text) - 1)
    if len(rows) != lines:
        return _count_line_by_line(text, source=source, skip_invalid=skip_invalid)
    keys = Counter((g[_PROTO], g[_OSRC], g[_RSRC], g[_RDST], g[_RSPORT]) for g in rows if g[_PROTO])
    counts: dict[NatEndpoint, int] = {}
    try:
        for key, n in keys.items():
            endpoint = _endpoint(*key)
            if endpoint is not None:
                counts[endpoint] = counts.get(endpoint, 0) + n
    except ValueError:
        return _count_line_by_line(text, source=source, skip_invalid=skip_invalid)
    return DumpCounts(counts, lines, 0, FORMAT)


@functools.lru_cache(maxsize=1 << 16)  # a dump repeats the same few endpoints
def _endpoint(proto: str, osrc: str, rsrc: str, rdst: str, rsport: str) -> NatEndpoint | None:
    """The NatEndpoint of a masqueraded connection; None when it was not source-NATed."""
    orig_src, remote, egress = parse_ip(osrc), parse_ip(rsrc), parse_ip(rdst)
    if not orig_src.version == remote.version == egress.version:
        raise ValueError("addresses of different families")
    if egress == orig_src:
        return None
    parsed = Proto.parse(proto)
    port = Endpoint(remote, _int(rsport)).port if parsed.has_ports else 0
    return NatEndpoint(Family.of(egress), parsed, egress, remote, port)


def _count_line_by_line(text: str, *, source: str, skip_invalid: bool) -> DumpCounts:
    counts: dict[NatEndpoint, int] = {}
    skipped = 0
    lines = text.split("\n")[:-1]
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        match = _ONE.fullmatch(line)
        why = None
        if match is None:
            why = "not a conntrack -L line"
        elif match[1]:
            try:
                g = match.groups()
                endpoint = _endpoint(g[_PROTO], g[_OSRC], g[_RSRC], g[_RDST], g[_RSPORT])
            except ValueError as exc:
                why = f"bad tuple ({exc})"
            else:
                if endpoint is not None:
                    counts[endpoint] = counts.get(endpoint, 0) + 1
        if why is not None:
            if not skip_invalid:
                raise bad_line(source, number, line.encode(), why)
            skipped += 1
    return DumpCounts(counts, len(lines), skipped, FORMAT)


def iter_conntrack(data: bytes, *, source: str, skip_invalid: bool = False) -> Iterator[NatEntry]:
    """The NAT entries of every masqueraded connection: OUT then IN, like Cilium's pair.

    OUT is the original tuple translated to the egress address; IN is the reply tuple
    translated back to the original source. For ICMP the echo id stands in the port of
    the local side and the remote side's port is 0, as in Cilium's map.
    """
    text = normalize(data).decode("utf-8", "replace")
    for number, line in enumerate(text.split("\n")[:-1], start=1):
        if not line:
            continue
        match = _ONE.fullmatch(line)
        try:
            if match is None:
                raise ValueError("not a conntrack -L line")
            pair = _entries(match.groups()) if match[1] else None
        except ValueError as exc:
            if skip_invalid:
                continue
            raise bad_line(source, number, line.encode(), str(exc)) from None
        if pair is not None:
            yield from pair


def _entries(g: _Groups) -> tuple[NatEntry, NatEntry] | None:
    proto = Proto.parse(g[_PROTO])
    if proto.has_ports:
        orig = FiveTuple(
            proto,
            Endpoint(parse_ip(g[_OSRC]), _int(g[_OSPORT])),
            Endpoint(parse_ip(g[_ODST]), _int(g[_ODPORT])),
        )
        reply = FiveTuple(
            proto,
            Endpoint(parse_ip(g[_RSRC]), _int(g[_RSPORT])),
            Endpoint(parse_ip(g[_RDST]), _int(g[_RDPORT])),
        )
    else:
        orig = FiveTuple(
            proto,
            Endpoint(parse_ip(g[_OSRC]), _int(g[_OID])),
            Endpoint(parse_ip(g[_ODST]), 0),
        )
        reply = FiveTuple(
            proto,
            Endpoint(parse_ip(g[_RSRC]), 0),
            Endpoint(parse_ip(g[_RDST]), _int(g[_RID])),
        )
    if orig.family is not reply.family:
        raise ValueError("original and reply tuples of different families")
    if reply.dst.ip == orig.src.ip:
        return None
    return (
        NatEntry(Direction.OUT, orig, reply.dst),
        NatEntry(Direction.IN, reply, orig.src),
    )


def sniff(line: bytes) -> bool:
    """Whether a (first, non-blank) line looks like ``conntrack -L`` output."""
    return b" src=" in line or b"conntrack-tools" in line
