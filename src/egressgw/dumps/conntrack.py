"""``conntrack -L``: the Linux conntrack table as conntrack-tools prints it.

A line is what libnetfilter_conntrack's ``__snprintf_conntrack_default``
(src/conntrack/snprintf_default.c) writes, in this order, each field only when the kernel
sent it or an ``-o`` option asked for it::

    [ipv4     2 ]tcp      6 431999 ESTABLISHED src=192.0.2.2 dst=198.51.100.2 sport=41000 \
dport=80 [zone-orig=1 ][packets=3 bytes=180 ][UNREPLIED ]src=198.51.100.2 dst=203.0.113.1 \
sport=80 dport=41000 [zone-reply=2 ][packets=2 bytes=120 ][[ASSURED]|[OFFLOAD]|[HW_OFFLOAD] ]\
[mark=0 ][secmark=0 ][secctx=... ][zone=7 ][delta-time=12 ][[start=...] ][[stop=...] ]\
[helper=ftp ][use=1 ][id=123 ][labels=a,b]

``-o extended`` adds the ``ipv4 2``/``ipv6 10`` prefix, ``-o id`` the ``id=``,
``-o ktimestamp`` ``[start=...]``, ``-o labels`` ``labels=``; accounting
(``nf_conntrack_acct=1``) adds ``packets= bytes=`` per direction and timestamps
(``nf_conntrack_timestamp=1``) ``delta-time=``. Tuples carry ``sport= dport=`` (TCP, UDP,
UDP-Lite, SCTP, DCCP), ``type= code= id=`` (ICMP, ICMPv6), ``srckey= dstkey=`` (GRE) or
nothing (other protocols, printed ``unknown``).

Every line is one of:

- a connection nat-stats counts: TCP, UDP, ICMP (IPv4) or ICMPv6 (IPv6), masqueraded
  (the reply tuple's destination differs from the original source: it is the egress IP,
  and the reply source the remote endpoint; port 0 for ICMP);
- a valid connection that is not counted: not source-NATed, or another protocol (SCTP,
  DCCP, GRE, UDP-Lite, ``unknown``);
- blank, or conntrack's ``N flow entries have been shown.`` summary (stderr, if captured);
- anything else: an error naming the first such line (or, with ``skip_invalid``, skipped
  and counted in ``DumpCounts.skipped``).

Every field is checked: names against numbers, the TCP state, which port fields the
protocol prints, addresses (one family per line, no zones), ports and ICMP ids in
0..65535; conntrack-tools prints ASCII, so any other byte makes the line invalid.
"""

from __future__ import annotations

import functools
import operator
import re
from collections import Counter
from collections.abc import Callable, Iterator
from typing import NamedTuple

from egressgw.dumps.base import DumpCounts, bad_line, normalize
from egressgw.limits import TAKEOVER_TCP_STATES
from egressgw.net import (
    Direction,
    Endpoint,
    Family,
    FiveTuple,
    IPAddress,
    NatEndpoint,
    NatEntry,
    Proto,
    is_counted,
    parse_ip,
)

FORMAT = "conntrack"

# libnetfilter_conntrack src/conntrack/proto.c: the names it prints for layer 4 and
# layer 3 protocol numbers ("unknown" for any other number).
L4_NAMES = {"tcp": 6, "udp": 17, "udplite": 136, "icmp": 1, "icmpv6": 58, "sctp": 132,
            "gre": 47, "dccp": 33}
L3_NAMES = {"ipv4": 2, "ipv6": 10}
# The TCP states it prints (SYN_SENT2 was printed LISTEN by older versions).
TCP_STATES = frozenset(("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
                        "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2", "LISTEN"))
# The protocols egressgw knows, by the names conntrack prints (which of them count, per
# family, is net.COUNTED_PROTOS's answer).
_PROTOS = {proto.name.lower(): proto for proto in Proto}
# Which fields each protocol's tuples carry.
_PORTS, _ICMP, _GRE, _NONE = "ports", "icmp", "gre", "none"
_FIELDS = {"tcp": _PORTS, "udp": _PORTS, "udplite": _PORTS, "sctp": _PORTS, "dccp": _PORTS,
           "icmp": _ICMP, "icmpv6": _ICMP, "gre": _GRE, "unknown": _NONE}
# The TCP states whose port nf_nat takes over when its port search gets hard.
_TAKEOVER_STATES = frozenset(TAKEOVER_TCP_STATES.values())
# Protocols whose conntrack entries carry a state word.
_STATEFUL = frozenset(("tcp", "sctp", "dccp"))

_U16 = r"(?:6553[0-5]|655[0-2]\d|65[0-4]\d\d|6[0-4]\d{3}|[1-5]\d{4}|[1-9]\d{0,3}|0)"
_U8 = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_NUM = r"(?:[1-9]\d*|0)"
_ADDR = r"[0-9a-fA-F:.]+"


def _fields(d: str) -> str:
    """The protocol fields of one tuple; the one-letter marker groups say which were there."""
    return (
        rf"(?: (?P<{d}p>s)port=(?P<{d}sport>{_U16}) dport=(?P<{d}dport>{_U16})"
        rf"| (?P<{d}i>t)ype=(?P<{d}type>{_U8}) code={_U8} id=(?P<{d}id>{_U16})"
        rf"| (?P<{d}g>s)rckey=0x[0-9a-f]{{1,4}} dstkey=0x[0-9a-f]{{1,4}})?"
    )


_CONNECTION = (
    rf"(?:(?P<l3>ipv4|ipv6|unknown) +(?P<l3num>{_NUM}) +)?"
    rf"(?P<name>[a-z][a-z0-9]*) +(?P<num>{_NUM}) +{_NUM}(?: (?P<state>[A-Z][A-Z0-9_]*))?"
    rf" src=(?P<osrc>{_ADDR}) dst=(?P<odst>{_ADDR})" + _fields("o")
    + rf"(?: zone-orig={_NUM})?(?: packets={_NUM} bytes={_NUM})?(?P<unreplied> \[UNREPLIED\])?"
    rf" src=(?P<rsrc>{_ADDR}) dst=(?P<rdst>{_ADDR})" + _fields("r")
    + rf"(?: zone-reply={_NUM})?(?: packets={_NUM} bytes={_NUM})?"
    r"(?: \[(?:HW_OFFLOAD|OFFLOAD|ASSURED)\]){0,2}"
    rf"(?: mark={_NUM})?(?: secmark={_NUM})?(?: secctx=[^\s\[\]]+)?(?: zone={_NUM})?"
    rf"(?: delta-time={_NUM})?(?: \[start=[^\]\n]+\])?(?: \[stop=[^\]\n]+\])?"
    rf"(?: helper=\S+)?(?: use={_NUM})?(?: id={_NUM})?(?: labels=\S+)?"
)
_SUMMARY = r"conntrack v[\d.]+ \(conntrack-tools\): \d+ flow entr(?:y|ies) ha(?:s|ve) been shown\."
_LINE = rf"{_CONNECTION}|{_SUMMARY}"

# What decides how a line counts, in the order _key_of gathers it from the groups.
_KEY_GROUPS = ("name", "l3", "l3num", "num", "state", "osrc", "odst", "op", "oi", "og",
               "rsrc", "rdst", "rp", "ri", "rg", "rsport")


class _Key(NamedTuple):
    name: str
    l3: str
    l3num: str
    num: str
    state: str
    osrc: str
    odst: str
    op: str
    oi: str
    og: str
    rsrc: str
    rdst: str
    rp: str
    ri: str
    rg: str
    rsport: str


class _Grammar(NamedTuple):
    """The compiled line regexes and where the key's groups are in a match."""

    lines: re.Pattern[str]  # the bulk pass: every line, blank ones included; key groups only
    key_of_row: Callable[[tuple[str | None, ...]], tuple[str | None, ...]]  # _KEY_GROUPS
    one: re.Pattern[str]  # one line, every group
    key_index: list[int]


def _only_key_groups(pattern: str) -> str:
    """``pattern`` with every named group not in _KEY_GROUPS made non-capturing: findall
    then builds 16-string rows instead of 30 (a third less time on big dumps)."""
    return re.sub(r"\(\?P<(\w+)>",
                  lambda group: group[0] if group[1] in _KEY_GROUPS else "(?:", pattern)


@functools.cache
def _grammar() -> _Grammar:
    """Compiled on first use: compiling takes ~20 ms, which ``nat-stats`` on a ``bpf nat
    list`` dump (this module imported, never used) should not pay. re.ASCII: no Unicode
    digits."""
    one = re.compile(_LINE, re.ASCII)
    lines = re.compile(rf"^(?:{_only_key_groups(_LINE)})?$", re.MULTILINE | re.ASCII)
    return _Grammar(
        lines=lines,
        key_of_row=operator.itemgetter(*(lines.groupindex[name] - 1 for name in _KEY_GROUPS)),
        one=one,
        key_index=[one.groupindex[name] - 1 for name in _KEY_GROUPS],
    )


def _key_of(groups: tuple[str | None, ...], key_index: list[int]) -> _Key:
    return _Key(*(groups[i] or "" for i in key_index))


# A dump names the same few hundred addresses over and over (pods, remotes, egress IPs):
# parse each once. Addresses are immutable, so sharing them is safe.
_parse_ip = functools.lru_cache(maxsize=1 << 16)(parse_ip)


class Connection(NamedTuple):
    """A valid connection line, classified: its protocol and addresses, and its nat-stats
    key when it counts (None: not source-NATed, or a protocol nat-stats does not count)."""

    proto: Proto | None
    orig_src: IPAddress
    reply_src: IPAddress
    reply_dst: IPAddress
    endpoint: NatEndpoint | None


@functools.lru_cache(maxsize=1 << 16)  # a dump repeats the same few keys
def classify(key: _Key) -> Connection:
    """Check a line's fields against each other; ValueError naming the first that is wrong."""
    name = key.name
    if name == "unknown":
        if int(key.num) in L4_NAMES.values():
            raise ValueError(f"protocol {key.num} printed as unknown")
    elif L4_NAMES.get(name) != int(key.num):
        raise ValueError(f"protocol {name} {key.num}")
    if key.state and name not in _STATEFUL:
        raise ValueError(f"a {name} entry with a state ({key.state})")
    if name == "tcp" and key.state and key.state not in TCP_STATES:
        raise ValueError(f"unknown TCP state {key.state}")
    expected = _FIELDS[name]
    for side, ports, icmp, gre in (("original", key.op, key.oi, key.og),
                                   ("reply", key.rp, key.ri, key.rg)):
        found = _PORTS if ports else _ICMP if icmp else _GRE if gre else _NONE
        if found != expected:
            raise ValueError(f"{name} {side} tuple with {found} fields")
    # The regex lets no brackets, zones or spaces through to parse_ip.
    addresses = [_parse_ip(text) for text in (key.osrc, key.odst, key.rsrc, key.rdst)]
    version = addresses[0].version
    if any(ip.version != version for ip in addresses):
        raise ValueError("addresses of different families")
    family = Family.IPV4 if version == 4 else Family.IPV6
    if key.l3:
        number = L3_NAMES.get(key.l3)
        if key.l3 == "unknown" or number != int(key.l3num):
            raise ValueError(f"layer 3 protocol {key.l3} {key.l3num}")
        if key.l3 != family:
            raise ValueError(f"{key.l3} entry with {family} addresses")
    orig_src, _orig_dst, reply_src, reply_dst = addresses
    proto = _PROTOS.get(name)
    if proto is None:
        return Connection(None, orig_src, reply_src, reply_dst, None)
    other = Family.IPV6 if family is Family.IPV4 else Family.IPV4
    if not is_counted(family, proto) and is_counted(other, proto):
        # icmp with IPv6 addresses or icmpv6 with IPv4 ones: the kernel has no such entry
        raise ValueError(f"{name} entry with {family} addresses")
    endpoint = None
    if reply_dst != orig_src and is_counted(family, proto):
        port = int(key.rsport) if proto.has_ports else 0
        endpoint = NatEndpoint(family, proto, reply_dst, reply_src, port)
    return Connection(proto, orig_src, reply_src, reply_dst, endpoint)


def count_conntrack(data: bytes, *, source: str, skip_invalid: bool = False) -> DumpCounts:
    """Connections per NatEndpoint among the masqueraded connections of a ``conntrack -L``."""
    text = normalize(data).decode("utf-8", "replace")
    lines = text.count("\n")
    # Without the final newline, so that "^$" cannot match once more at the very end.
    grammar = _grammar()
    rows = grammar.lines.findall(text, 0, len(text) - 1) if text.isascii() else []
    if len(rows) != lines:
        return _count_line_by_line(text, source=source, skip_invalid=skip_invalid)
    # Count the rows' keys in C (itemgetter, Counter); build a _Key per distinct key only.
    keys = Counter(map(grammar.key_of_row, rows))
    del rows
    tally = _Tally()
    try:
        for raw, n in keys.items():
            if raw[0] is not None:  # summary and blank lines have no protocol name
                tally.add(_Key(*(field or "" for field in raw)), n)
    except ValueError:  # find and name the first bad line
        return _count_line_by_line(text, source=source, skip_invalid=skip_invalid)
    return DumpCounts(tally.counts, lines, 0, FORMAT, reusable=tally.reusable)


class _Tally:
    """Connections per NatEndpoint, and of them those in a TCP state whose port Linux can
    take over (egressgw.limits.TAKEOVER_TCP_STATES), counted in the same pass."""

    def __init__(self) -> None:
        self.counts: dict[NatEndpoint, int] = {}
        self.reusable: dict[NatEndpoint, int] = {}

    def add(self, key: _Key, n: int) -> None:
        """Count ``n`` lines of ``key`` (ValueError if the key is invalid)."""
        endpoint = classify(key).endpoint
        if endpoint is None:
            return
        self.counts[endpoint] = self.counts.get(endpoint, 0) + n
        if key.name == "tcp" and key.state in _TAKEOVER_STATES:
            self.reusable[endpoint] = self.reusable.get(endpoint, 0) + n


def _parse_key(line: str) -> _Key | None:
    """One line's key, checked (classify); None for a summary line; ValueError if invalid."""
    grammar = _grammar()
    match = grammar.one.fullmatch(line) if line.isascii() else None
    if match is None:
        raise ValueError("not a conntrack -L line")
    if match["name"] is None:
        return None
    key = _key_of(match.groups(), grammar.key_index)
    try:
        classify(key)
    except ValueError as exc:
        raise ValueError(f"bad conntrack entry ({exc})") from None
    return key


def _parse_line(line: str) -> Connection | None:
    """One line: its Connection, None for a summary line; ValueError when invalid."""
    key = _parse_key(line)
    return None if key is None else classify(key)


def _count_line_by_line(text: str, *, source: str, skip_invalid: bool) -> DumpCounts:
    tally = _Tally()
    skipped = 0
    lines = text.split("\n")[:-1]
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        try:
            key = _parse_key(line)
        except ValueError as exc:
            if not skip_invalid:
                raise bad_line(source, number, line.encode(), str(exc)) from None
            skipped += 1
            continue
        if key is not None:
            tally.add(key, 1)
    return DumpCounts(tally.counts, len(lines), skipped, FORMAT, reusable=tally.reusable)


def iter_conntrack(data: bytes, *, source: str, skip_invalid: bool = False) -> Iterator[NatEntry]:
    """The NAT entries of every counted masqueraded connection: OUT then IN, like Cilium's
    pair.

    OUT is the original tuple translated to the egress address; IN is the reply tuple
    translated back to the original source. For ICMP the echo id stands in the port of
    the local side and the remote side's port is 0, as in Cilium's map.
    """
    text = normalize(data).decode("utf-8", "replace")
    for number, line in enumerate(text.split("\n")[:-1], start=1):
        if not line:
            continue
        try:
            connection = _parse_line(line)
            if connection is None or connection.endpoint is None:
                continue
            pair = _entries(_grammar().one.fullmatch(line), connection)  # type: ignore[arg-type]
        except ValueError as exc:
            if skip_invalid:
                continue
            raise bad_line(source, number, line.encode(), str(exc)) from None
        yield from pair


def _entries(match: re.Match[str], connection: Connection) -> tuple[NatEntry, NatEntry]:
    proto = connection.proto
    assert proto is not None
    orig_dst = parse_ip(match["odst"])
    if proto.has_ports:
        orig = FiveTuple(proto, Endpoint(connection.orig_src, int(match["osport"])),
                         Endpoint(orig_dst, int(match["odport"])))
        reply = FiveTuple(proto, Endpoint(connection.reply_src, int(match["rsport"])),
                          Endpoint(connection.reply_dst, int(match["rdport"])))
    else:
        orig = FiveTuple(proto, Endpoint(connection.orig_src, int(match["oid"])),
                         Endpoint(orig_dst, 0))
        reply = FiveTuple(proto, Endpoint(connection.reply_src, 0),
                          Endpoint(connection.reply_dst, int(match["rid"])))
    return (
        NatEntry(Direction.OUT, orig, reply.dst),
        NatEntry(Direction.IN, reply, orig.src),
    )


def sniff(line: bytes) -> bool:
    """Whether a (first, non-blank) line looks like ``conntrack -L`` output."""
    return b" src=" in line or b"conntrack-tools" in line
