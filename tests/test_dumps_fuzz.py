"""Fuzzing both dump readers with mutated real lines (bounded, in the normal run).

Each example takes a valid line, mutates it (a character inserted, deleted or replaced,
from an alphabet of the characters that matter: digits, separators, brackets, letters,
a non-ASCII digit), and puts it among valid lines. Then:

- the readers raise nothing but InputError;
- if the reference below (written here from what cilium-dbg and conntrack-tools print,
  not from the readers) rejects the mutated line, the bulk count, the entry path and
  ``--skip-invalid`` all name or skip exactly that line;
- if it accepts it, the bulk count equals the reference's count of the whole dump.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections import Counter
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egressgw.dumps import cilium, count_endpoints, iter_entries
from egressgw.dumps.synthetic import bench_lines
from egressgw.errors import InputError
from egressgw.net import Family, NatEndpoint, Proto

GOLDEN = Path(__file__).parent / "golden"
ALPHABET = "0123456789 .:[]-=>_()?aefxyzACDINOPSTUX\u0663\t,"
# EGRESSGW_FUZZ_EXAMPLES=5000 for a longer run on demand.
FUZZ = settings(max_examples=int(os.environ.get("EGRESSGW_FUZZ_EXAMPLES", "250")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


class Invalid(Exception):
    pass


def mutate(data: st.DataObject, line: str) -> str:
    op = data.draw(st.sampled_from(["insert", "delete", "replace"]))
    at = data.draw(st.integers(0, len(line) - (op != "insert")))
    char = data.draw(st.sampled_from(ALPHABET))
    if op == "insert":
        return line[:at] + char + line[at:]
    if op == "delete":
        return line[:at] + line[at + 1 :]
    return line[:at] + char + line[at + 1 :]


def check(lines: list[str], at: int, reference: Counter[NatEndpoint] | None,
          expected_total: Counter[NatEndpoint], fmt: str) -> None:
    """``reference`` is None when the reference rejects line ``at`` (0-based). The format
    is given: a mutated first line may no longer tell it (that error is tested apart)."""
    data = "\n".join(lines).encode()
    if reference is None:
        for read in (lambda: count_endpoints(data, source="f", fmt=fmt),
                     lambda: list(iter_entries(data, source="f", fmt=fmt))):
            try:
                read()
            except InputError as exc:
                assert exc.line == at + 1, (lines[at], str(exc))
            else:
                raise AssertionError(f"accepted a line the reference rejects: {lines[at]!r}")
        skipped = count_endpoints(data, source="f", fmt=fmt, skip_invalid=True)
        assert skipped.skipped == 1, lines[at]
        assert Counter(skipped.counts) == expected_total, lines[at]
        return
    counted = count_endpoints(data, source="f", fmt=fmt)
    assert counted.skipped == 0
    assert Counter(counted.counts) == expected_total + reference, lines[at]


# -- cilium-dbg bpf nat list ------------------------------------------------------------

_PORT = re.compile(r"0|[1-9][0-9]{0,4}")


def cilium_address(text: str, bracketed: bool) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if not text.isascii():
        raise Invalid
    try:
        if bracketed:  # the IPv6 map; Go prints IPv4-mapped addresses dotted
            inner = text
            if ":" not in inner:
                return ipaddress.IPv6Address("::ffff:" + str(ipaddress.IPv4Address(inner)))
            if "%" in inner or inner != inner.lower():  # Go prints lowercase hex, no zones
                raise Invalid
            return ipaddress.IPv6Address(inner)
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise Invalid from None


def cilium_endpoint(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not _PORT.fullmatch(port) or not port.isascii() or int(port) > 65535:
        raise Invalid
    if host.startswith("[") and host.endswith("]") and len(host) > 2:
        return cilium_address(host[1:-1], True), int(port)
    if "[" in host or "]" in host:
        raise Invalid
    return cilium_address(host, False), int(port)


def cilium_reference(line: str) -> Counter[NatEndpoint]:
    """What one ``bpf nat list`` line counts (pkg/maps/nat Dump, pkg/maps/nat/stats)."""
    if line == "":
        return Counter()
    tokens = line.split(" ")
    if len(tokens) < 9:
        raise Invalid
    proto, direction, src, arrow, dst = tokens[:5]
    rest = tokens[5:]
    if proto not in ("TCP", "UDP", "ICMP", "ICMPv6", "SCTP") or arrow != "->":
        raise Invalid
    if direction not in ("IN", "OUT"):
        raise Invalid
    for marker in ("related", "service"):  # in this order, each at most once
        if rest and rest[0] == marker:
            rest = rest[1:]
    xlate_kind = {"IN": "XLATE_DST", "OUT": "XLATE_SRC"}[direction]
    if len(rest) < 4 or rest[0] != xlate_kind:
        raise Invalid
    xlate, created = rest[1], rest[2:-1]
    last = rest[-1]
    if created[:1] == ["Created=?"] and len(created) == 3 and created[1] == "(raw":
        ok = created[2].endswith(")") and created[2][:-1].isdigit() and created[2].isascii()
    elif len(created) == 2 and created[1] == "ago" and created[0].startswith("Created="):
        value = created[0][len("Created="):]
        ok = value.endswith("sec") and re.fullmatch(r"-?[0-9]+", value[:-3]) is not None
    else:
        ok = False
    name, _, number = last.partition("=")
    if not ok or name not in ("NeedsCT", "HostLocal") or not re.fullmatch(r"[0-9]+", number):
        raise Invalid
    endpoints = [cilium_endpoint(t) for t in (src, dst, xlate)]
    versions = {ip.version for ip, _ in endpoints}
    if len(versions) != 1:
        raise Invalid
    family = Family.IPV4 if versions == {4} else Family.IPV6
    if (proto == "ICMP" and family is Family.IPV6) or (proto == "ICMPv6" and family is Family.IPV4):
        raise Invalid
    if direction == "OUT" or proto == "SCTP":
        return Counter()
    (remote, remote_port), (egress, _port) = endpoints[0], endpoints[1]
    return Counter({NatEndpoint(family, Proto.parse(proto), egress, remote, remote_port): 1})


def cilium_reference_or_none(line: str) -> Counter[NatEndpoint] | None:
    try:
        return cilium_reference(line)
    except Invalid:
        return None


CILIUM_V4 = "".join(bench_lines(400, seed=41)).splitlines()
CILIUM_MIXED = [
    "UDP IN 198.51.100.53:53 -> 172.18.0.2:33000 related XLATE_DST 10.244.1.5:33000 "
    "Created=? (raw 1234567) NeedsCT=0",
    "TCP OUT 10.244.1.9:80 -> 192.0.2.7:41000 service XLATE_SRC 172.18.0.2:41000 "
    "Created=3sec ago HostLocal=1",
    "ICMPv6 IN [fc00:c111::3]:0 -> [fc00:c111::2]:51264 XLATE_DST [fc00:c111::2]:13300 "
    "Created=-1sec ago NeedsCT=0",
    "TCP IN [2001:db8::1]:443 -> [fd00::2]:40000 related service XLATE_DST [fd00::5]:51234 "
    "Created=7sec ago NeedsCT=1",
    "TCP IN [192.0.2.80]:443 -> [192.168.64.2]:40000 XLATE_DST [fd00::5]:51234 "
    "Created=7sec ago NeedsCT=1",
    "SCTP OUT 10.244.1.5:5000 -> 192.0.2.9:5000 XLATE_SRC 172.18.0.2:5000 "
    "Created=1sec ago NeedsCT=0",
    "",
]


def test_the_cilium_reference_accepts_every_valid_line() -> None:
    for line in CILIUM_V4 + CILIUM_MIXED:
        assert cilium_reference_or_none(line) is not None, line


@FUZZ
@given(st.data())
def test_mutated_cilium_lines_in_common_chunks(data: st.DataObject) -> None:
    """Chunks of the common IPv4 shapes: the bulk path's numpy check (big dumps) and the
    strict regex (small ones)."""
    at = data.draw(st.integers(0, 39))
    lines = CILIUM_V4[:40]
    lines = [*lines[:at], mutate(data, lines[at]), *lines[at + 1 :]]
    total = sum((cilium_reference(x) for i, x in enumerate(lines) if i != at), Counter())
    for numpy_from in (0, 1 << 40):
        with mock.patch.object(cilium, "NUMPY_MIN_BYTES", numpy_from):
            check(lines, at, cilium_reference_or_none(lines[at]), total, "cilium")


@FUZZ
@given(st.data())
def test_mutated_cilium_lines_in_other_chunks(data: st.DataObject) -> None:
    """IPv6, markers, the raw clock, SCTP: the bulk path's strict regex."""
    base = [*CILIUM_MIXED[:-1], *CILIUM_V4[:6], ""]
    at = data.draw(st.integers(0, len(base) - 2))  # not the blank line
    lines = [*base[:at], mutate(data, base[at]), *base[at + 1 :]]
    total = sum((cilium_reference(x) for i, x in enumerate(lines) if i != at), Counter())
    check(lines, at, cilium_reference_or_none(lines[at]), total, "cilium")


# -- conntrack -L -----------------------------------------------------------------------

L4 = {"tcp": 6, "udp": 17, "udplite": 136, "icmp": 1, "icmpv6": 58, "sctp": 132, "gre": 47,
      "dccp": 33}
PORTS = {"tcp", "udp", "udplite", "sctp", "dccp"}
STATES = {"NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK",
          "TIME_WAIT", "CLOSE", "SYN_SENT2", "LISTEN"}
# After the reply tuple, libnetfilter_conntrack's order (__snprintf_conntrack_default).
TAIL = ["zone-reply", "packets", "bytes", "[flags]", "mark", "secmark", "secctx", "zone",
        "delta-time", "[start]", "[stop]", "helper", "use", "id", "labels"]


def number(text: str, limit: int | None = None) -> int:
    if not re.fullmatch(r"0|[1-9][0-9]*", text):
        raise Invalid
    if limit is not None and int(text) > limit:
        raise Invalid
    return int(text)


def conntrack_reference(line: str) -> Counter[NatEndpoint]:
    """What one ``conntrack -L`` line counts (a walk over its tokens, field by field)."""
    if line == "" or re.fullmatch(r"conntrack v[0-9.]+ \(conntrack-tools\): [0-9]+ flow "
                                  r"entr(y|ies) ha(s|ve) been shown\.", line):
        return Counter()
    if not line.isascii():
        raise Invalid
    # ctime() dates contain spaces: take the bracketed timestamps out first.
    line = re.sub(r" \[(start|stop)=[^\]]+\]", r" [\1]", line)
    head = re.match(r"((ipv4|ipv6|unknown) +([0-9]+) +)?([a-z0-9]+) +([0-9]+) +", line)
    if head is None:
        raise Invalid
    l3, l3num, name, num = head[2], head[3], head[4], head[5]
    tokens = line[head.end():].split(" ")
    number(tokens.pop(0))  # the timeout
    if name == "unknown":
        if number(num) in L4.values():
            raise Invalid
    elif L4.get(name) != number(num):
        raise Invalid
    if tokens and re.fullmatch(r"[A-Z][A-Z0-9_]*", tokens[0]):
        state = tokens.pop(0)
        if name not in ("tcp", "sctp", "dccp") or (name == "tcp" and state not in STATES):
            raise Invalid
    tuples = []
    for direction in ("orig", "reply"):
        fields: dict[str, str] = {}
        for key in ("src", "dst"):
            if not tokens or not tokens[0].startswith(key + "="):
                raise Invalid
            fields[key] = tokens.pop(0)[len(key) + 1 :]
        expect = (["sport", "dport"] if name in PORTS else ["type", "code", "id"]
                  if name in ("icmp", "icmpv6") else ["srckey", "dstkey"] if name == "gre"
                  else [])
        for key in expect:
            if not tokens or not tokens[0].startswith(key + "="):
                raise Invalid
            fields[key] = tokens.pop(0)[len(key) + 1 :]
        for key in ("sport", "dport", "id"):
            if key in fields:
                number(fields[key], 65535)
        for key in ("type", "code"):
            if key in fields:
                number(fields[key], 255)
        for key in ("srckey", "dstkey"):
            if key in fields and not re.fullmatch(r"0x[0-9a-f]{1,4}", fields[key]):
                raise Invalid
        if direction == "orig":
            if tokens and tokens[0].startswith("zone-orig="):
                number(tokens.pop(0)[10:])
            if tokens and tokens[0].startswith("packets="):
                number(tokens.pop(0)[8:])
                if not tokens or not tokens[0].startswith("bytes="):
                    raise Invalid
                number(tokens.pop(0)[6:])
            if tokens and tokens[0] == "[UNREPLIED]":
                tokens.pop(0)
        tuples.append(fields)
    keys = []
    for token in tokens:
        key = ("[flags]" if token in ("[ASSURED]", "[OFFLOAD]", "[HW_OFFLOAD]")
               else token if token in ("[start]", "[stop]") else token.partition("=")[0])
        if key not in TAIL:
            raise Invalid
        value = token.partition("=")[2]
        if key in ("zone-reply", "packets", "bytes", "mark", "secmark", "zone", "delta-time",
                   "use", "id"):
            number(value)
        if key == "secctx" and not re.fullmatch(r"[^\s\[\]]+", value):
            raise Invalid
        if key in ("helper", "labels") and not re.fullmatch(r"\S+", value):
            raise Invalid
        keys.append(key)
    order = [TAIL.index(k) for k in keys]
    for earlier, later, key in zip(order, order[1:], keys, strict=False):
        if not (earlier < later or (earlier == later and key == "[flags]")):
            raise Invalid  # out of order, or the same field twice
    if keys.count("[flags]") > 2:
        raise Invalid
    for i, key in enumerate(keys):  # counters come in pairs
        if key == "packets" and keys[i + 1 : i + 2] != ["bytes"]:
            raise Invalid
        if key == "bytes" and keys[i - 1 : i] != ["packets"]:
            raise Invalid
    try:
        addresses = [ipaddress.ip_address(t[k]) for t in tuples for k in ("src", "dst")]
    except ValueError:
        raise Invalid from None
    if len({a.version for a in addresses}) != 1 or any(
            "%" in t[k] or "[" in t[k] for t in tuples for k in ("src", "dst")):
        raise Invalid
    family = Family.IPV4 if addresses[0].version == 4 else Family.IPV6
    if l3 is not None and (l3 != family or int(l3num) != {"ipv4": 2, "ipv6": 10}[family]):
        raise Invalid
    if (name == "icmp" and family is Family.IPV6) or (name == "icmpv6" and family is Family.IPV4):
        raise Invalid
    orig_src, _orig_dst, reply_src, reply_dst = addresses
    if name not in ("tcp", "udp", "icmp", "icmpv6") or reply_dst == orig_src:
        return Counter()
    port = int(tuples[1]["sport"]) if name in ("tcp", "udp") else 0
    return Counter({NatEndpoint(family, Proto.parse(name), reply_dst, reply_src, port): 1})


def conntrack_reference_or_none(line: str) -> Counter[NatEndpoint] | None:
    try:
        return conntrack_reference(line)
    except Invalid:
        return None


CONNTRACK = [
    *(GOLDEN / "conntrack-L-all.txt").read_text().splitlines(),
    *(GOLDEN / "conntrack-L.txt").read_text().splitlines(),
    "tcp      6 117 TIME_WAIT src=192.0.2.7 dst=203.0.113.9 sport=40000 dport=443 "
    "zone-orig=1 src=203.0.113.9 dst=198.51.100.1 sport=443 dport=61000 zone-reply=2 "
    "[ASSURED] mark=3 secctx=system_u:object_r:unlabeled_t:s0 zone=2 use=1 labels=a,b",
    (GOLDEN / "conntrack-L.stderr.txt").read_text().strip(),
]


def test_the_conntrack_reference_accepts_every_real_line() -> None:
    for line in CONNTRACK:
        assert conntrack_reference_or_none(line) is not None, line


@FUZZ
@given(st.data())
def test_mutated_conntrack_lines(data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(CONNTRACK) - 1))
    lines = [*CONNTRACK[:at], mutate(data, CONNTRACK[at]), *CONNTRACK[at + 1 :]]
    total = sum((conntrack_reference(x) for i, x in enumerate(lines) if i != at), Counter())
    check(lines, at, conntrack_reference_or_none(lines[at]), total, "conntrack")
