"""The ctnetlink reader against a real conntrack table in a throwaway namespace.

Entries are created by the kernel itself (ctnetlink NEW with a NAT request, like
``conntrack -I --src-nat``), so status flags and reply tuples are the kernel's own.
"""

from __future__ import annotations

import os
import random
import re
import socket
import struct
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

from egressgw.datapath.kernel import ConntrackReader, conntrack_stats, snat_counts
from egressgw.datapath.kernel import conntrack as ct
from egressgw.datapath.kernel.ctfill import SnatEntry, fill, new_message
from egressgw.datapath.kernel.netns import entered
from egressgw.errors import DatapathError
from egressgw.net import Family, NatEndpoint, Proto, parse_ip
from netns import bare_netns, run_in

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    with bare_netns() as name:
        yield name


@pytest.fixture
def table(netns: str) -> Iterator[str]:
    run_in(netns, ["conntrack", "-F"], check=False)
    yield netns
    run_in(netns, ["conntrack", "-F"], check=False)


def random_entries(rng: random.Random, count: int) -> list[SnatEntry]:
    """A mix: TCP/UDP/ICMP, both families, masqueraded or not, on a few tuples."""
    entries = []
    used: set[tuple[object, ...]] = set()
    while len(entries) < count:
        v6 = rng.random() < 0.4
        proto = rng.choice([Proto.TCP, Proto.UDP, Proto.ICMPV6 if v6 else Proto.ICMP])
        pod = parse_ip(f"2001:db8:1::{rng.randint(16, 40):x}" if v6 else
                       f"192.0.2.{rng.randint(10, 40)}")
        remote = parse_ip(f"2001:db8:100::{rng.randint(16, 18):x}" if v6 else
                          f"198.51.100.{rng.randint(10, 12)}")
        egress = None if rng.random() < 0.2 else parse_ip(
            f"2001:db8:203::{rng.randint(16, 17):x}" if v6 else f"203.0.113.{rng.randint(10, 11)}")
        sport = rng.randint(1024, 60000)
        dport = rng.choice([53, 80, 443]) if proto.has_ports else 0
        key = (proto, pod, sport, remote, dport)
        if key in used:
            continue
        used.add(key)
        # Let the kernel pick the NAT port (a fixed one could clash between entries).
        entries.append(SnatEntry(proto, pod, sport, remote, dport, egress))
    return entries


def expected_counts(entries: list[SnatEntry]) -> Counter[NatEndpoint]:
    expected: Counter[NatEndpoint] = Counter()
    for e in entries:
        if e.egress is not None and e.egress != e.src:
            expected[NatEndpoint(Family.of(e.src), e.proto, e.egress, e.dst, e.dport)] += 1
    return expected


def test_counts_match_what_was_created(table: str) -> None:
    entries = random_entries(random.Random(7), 300)
    assert fill(entries, netns=table) == 0
    assert Counter(snat_counts(table)) == expected_counts(entries)


def test_user_side_filter_gives_the_same_counts(table: str) -> None:
    """On kernels without the status filter every entry comes back; we filter ourselves."""
    entries = random_entries(random.Random(8), 200)
    fill(entries, netns=table)
    with ConntrackReader(table) as reader:
        filtered = reader.snat_counts()
        reader._kernel_filter = False
        assert reader.snat_counts() == filtered
    assert Counter(filtered) == expected_counts(entries)


def test_fast_path_agrees_with_the_attribute_walker(table: str) -> None:
    entries = random_entries(random.Random(9), 200)
    fill(entries, netns=table)
    with ConntrackReader(table) as reader:
        for family in (socket.AF_INET, socket.AF_INET6):
            fast = reader._dump_counts(family, b"")
            slow: Counter[tuple[bytes, bytes, int, int]] = Counter()
            for buffer, _used, offsets in reader._dump(ct.IPCTNL_MSG_CT_GET, family, b""):
                for offset in offsets.tolist():
                    key = ct._slow_key(buffer, offset, family)
                    if key is not None:
                        slow[key] += 1
            assert fast == dict(slow)
            assert fast  # both families have masqueraded entries


def test_counts_agree_with_conntrack_tools(table: str) -> None:
    entries = random_entries(random.Random(10), 150)
    fill(entries, netns=table)
    listing = run_in(table, ["conntrack", "-L", "-o", "extended"]).stdout
    counted: Counter[tuple[Proto, str, str, int]] = Counter()
    for line in listing.splitlines():
        fields = re.findall(r"(src|dst|sport|dport|id)=(\S+)", line)
        orig, reply = fields[: len(fields) // 2], fields[len(fields) // 2 :]
        o, r = dict(orig), dict(reply)
        proto = Proto.parse(line.split()[2])
        if r["dst"] != o["src"]:
            port = int(r["sport"]) if proto.has_ports else 0
            counted[(proto, r["dst"], r["src"], port)] += 1
    ours = Counter({(ep.proto, str(ep.egress_ip), str(ep.remote_ip), ep.remote_port): n
                    for ep, n in snat_counts(table).items()})
    assert ours == counted


def test_stats_match_conntrack_tools(table: str) -> None:
    fill(random_entries(random.Random(11), 20), netns=table)
    listing = run_in(table, ["conntrack", "-S"]).stdout
    summed: Counter[str] = Counter()
    for name, value in re.findall(r"(\w+)=(\d+)", listing):
        if name != "cpu":
            summed[name] += int(value)
    ours = conntrack_stats(table)
    assert ours["insert"] == summed["insert"] >= 20
    for name in ("insert_failed", "drop", "early_drop", "found", "invalid"):
        assert ours[name] == summed[name]


def test_empty_table_gives_no_counts(table: str) -> None:
    assert snat_counts(table) == {}


def test_missing_namespace_is_a_datapath_error() -> None:
    with pytest.raises(DatapathError, match="egw-no-such-ns"):
        ConntrackReader("egw-no-such-ns")


# -- the attribute walker on layouts the fast path does not expect --------------------


def test_reordered_attributes_go_through_the_walker() -> None:
    """A message whose reply tuple lists proto before ip still counts, via the walker."""
    entry = SnatEntry(Proto.TCP, parse_ip("192.0.2.10"), 40000, parse_ip("198.51.100.10"), 443,
                      parse_ip("203.0.113.10"), 40000)
    assert new_message(entry, 1)  # the kernel's own layout is covered by the tests above

    def attr(kind: int, payload: bytes) -> bytes:
        data = struct.pack("=HH", 4 + len(payload), kind) + payload
        return data + b"\0" * (-len(data) & 3)

    ip = attr(1 | 0x8000, attr(1, parse_ip("198.51.100.10").packed)
              + attr(2, parse_ip("203.0.113.10").packed))
    proto = attr(2 | 0x8000, attr(1, bytes([6])) + attr(2, struct.pack(">H", 443)))
    orig = attr(1 | 0x8000, attr(1 | 0x8000, attr(1, parse_ip("192.0.2.10").packed)
                                 + attr(2, parse_ip("198.51.100.10").packed)) + proto)
    reply = attr(2 | 0x8000, proto + ip)  # proto first: not the kernel's order
    body = struct.pack("=BBH", socket.AF_INET, 0, 0) + orig + reply
    message = bytearray(struct.pack("=IHHII", 16 + len(body), 0x100, 2, 1, 0) + body)
    buffer = message + bytearray(ct.RECV_ROOM)
    counts: dict[tuple[bytes, bytes, int, int], int] = {}
    ct._count_batch(buffer, len(message), np.array([0], dtype=np.int64), socket.AF_INET, counts)
    key = (parse_ip("198.51.100.10").packed, parse_ip("203.0.113.10").packed, 6, 443)
    assert counts == {key: 1}


def test_fill_reports_entries_the_kernel_refused(table: str) -> None:
    entry = SnatEntry(Proto.UDP, parse_ip("192.0.2.10"), 5353, parse_ip("198.51.100.10"), 53,
                      parse_ip("203.0.113.10"))
    assert fill([entry], netns=table) == 0
    assert fill([entry, entry], netns=table) == 2  # EEXIST: already tracked
    assert sum(snat_counts(table).values()) == 1


def test_entering_a_namespace_returns_to_the_original_one(netns: str) -> None:
    here = os.readlink("/proc/thread-self/ns/net")
    with entered(netns):
        inside = os.readlink("/proc/thread-self/ns/net")
    assert inside != here
    assert os.readlink("/proc/thread-self/ns/net") == here
    with pytest.raises(RuntimeError), entered(netns):
        raise RuntimeError("boom")
    assert os.readlink("/proc/thread-self/ns/net") == here


def test_the_kernel_sends_only_source_nated_entries(table: str) -> None:
    entries = random_entries(random.Random(12), 120)
    fill(entries, netns=table)
    natted = sum(1 for e in entries if e.egress is not None and e.src.version == 4)
    status_filter = (ct._be32_attr(ct.CTA_STATUS, ct.IPS_SRC_NAT)
                     + ct._be32_attr(ct.CTA_STATUS_MASK, ct.IPS_SRC_NAT))
    with ConntrackReader(table) as reader:
        def messages(attrs: bytes) -> int:
            return sum(len(offsets) for _b, _u, offsets
                       in reader._dump(ct.IPCTNL_MSG_CT_GET, socket.AF_INET, attrs))

        assert messages(b"") == sum(1 for e in entries if e.src.version == 4)
        assert messages(status_filter) == natted
