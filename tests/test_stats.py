"""nat-stats: top K per family, ordering, saturation, and the cilium-dbg table."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from egressgw.config import NodePortRange
from egressgw.errors import ConfigError
from egressgw.net import Family, NatEndpoint, Proto, parse_ip
from egressgw.render.documents import dump_document
from egressgw.stats import compute_nat_stats, render_saturation, render_table, stats_document
from egressgw.stats.compute import top_k

GOLDEN = Path(__file__).parent / "golden"

# The seed document's example table (lines 43-51), whitespace-separated: its column
# spacing was lost, the golden file keeps the real tabwriter alignment.
SEED_ROWS = [
    "# IPFamily Proto EgressIP RemoteAddr Count",
    "ipv4 TCP 10.244.1.160 10.244.3.174:4240 1",
    "ipv4 ICMP 172.18.0.2 172.18.0.3 1",
    "ipv4 TCP 172.18.0.2 172.18.0.3:4240 1",
    "ipv4 TCP 172.18.0.2 172.18.0.4:6443 50",
    "ipv4 TCP 172.18.0.2 104.198.14.52:443 294",
    "ipv6 ICMPv6 [fc00:c111::2] [fc00:c111::3] 1",
    "ipv6 TCP [fd00:10:244:1::ec5d] [fd00:10:244:3::730c]:4240 1",
    "ipv6 TCP [fd00:10:244:1::ec5d] [fd00:10:244::915]:4240 1",
]


def endpoint(proto: Proto, egress: str, remote: str, port: int = 0) -> NatEndpoint:
    ip = parse_ip(egress)
    return NatEndpoint(Family.of(ip), proto, ip, parse_ip(remote), port)


def seed_counts() -> dict[NatEndpoint, int]:
    """The seed's rows, inserted in an order unlike the output order."""
    return {
        endpoint(Proto.TCP, "fd00:10:244:1::ec5d", "fd00:10:244::915", 4240): 1,
        endpoint(Proto.TCP, "172.18.0.2", "104.198.14.52", 443): 294,
        endpoint(Proto.TCP, "172.18.0.2", "172.18.0.3", 4240): 1,
        endpoint(Proto.ICMPV6, "fc00:c111::2", "fc00:c111::3"): 1,
        endpoint(Proto.TCP, "172.18.0.2", "172.18.0.4", 6443): 50,
        endpoint(Proto.ICMP, "172.18.0.2", "172.18.0.3"): 1,
        endpoint(Proto.TCP, "fd00:10:244:1::ec5d", "fd00:10:244:3::730c", 4240): 1,
        endpoint(Proto.TCP, "10.244.1.160", "10.244.3.174", 4240): 1,
    }


def test_seed_table_matches_the_seed_rows_and_the_golden_alignment() -> None:
    table = render_table(compute_nat_stats(seed_counts()).rows)
    assert [" ".join(line.split()) for line in table.splitlines()] == SEED_ROWS
    assert table == (GOLDEN / "seed-nat-stats.txt").read_text()


def test_columns_are_widest_cell_plus_three() -> None:
    header = render_table(compute_nat_stats(seed_counts()).rows).splitlines()[0]
    # "# IPFamily" (10) + 3; "ICMPv6" (6) + 3; "[fd00:10:244:1::ec5d]" (21) + 3;
    # "[fd00:10:244:3::730c]:4240" (26) + 3; the last column is not padded.
    assert (
        header == "# IPFamily   Proto    EgressIP                RemoteAddr                   Count"
    )


def test_ranks_are_by_descending_count_with_the_same_tie_order() -> None:
    stats = compute_nat_stats(seed_counts())
    ranks = {(r.proto.label, str(r.egress_ip), r.remote_addr): r.rank for r in stats.rows}
    assert ranks[("TCP", "172.18.0.2", "104.198.14.52:443")] == 1
    assert ranks[("TCP", "172.18.0.2", "172.18.0.4:6443")] == 2
    assert ranks[("TCP", "10.244.1.160", "10.244.3.174:4240")] == 3
    assert ranks[("ICMP", "172.18.0.2", "172.18.0.3")] == 4
    assert ranks[("TCP", "172.18.0.2", "172.18.0.3:4240")] == 5
    assert [r.rank for r in stats.rows if r.family is Family.IPV6] == [1, 2, 3]


def test_saturation_is_the_top_count_over_cilium_divisor() -> None:
    stats = compute_nat_stats(seed_counts())
    assert stats.divisor == 32767
    assert stats.saturation == {Family.IPV4: 294 / 32767, Family.IPV6: 1 / 32767}
    assert render_saturation(stats) == (
        "saturation ipv4: 0.90% (294/32767)\nsaturation ipv6: 0.00% (1/32767)\n"
    )
    narrow = NodePortRange(30000, 40000).cilium_saturation_divisor
    assert compute_nat_stats(seed_counts(), divisor=narrow).saturation[Family.IPV4] == 294 / 25534


def test_a_family_without_rows_has_no_saturation() -> None:
    only_v4 = {ep: n for ep, n in seed_counts().items() if ep.family is Family.IPV4}
    stats = compute_nat_stats(only_v4)
    assert set(stats.saturation) == {Family.IPV4}
    assert stats.top(Family.IPV6) is None
    assert compute_nat_stats({}).rows == ()
    assert render_table([]) == "# IPFamily   Proto   EgressIP   RemoteAddr   Count\n"


def test_entries_keeps_the_top_k_of_each_family() -> None:
    stats = compute_nat_stats(seed_counts(), entries=2)
    rows = [(str(r.family), r.count, r.remote_addr, r.rank) for r in stats.rows]
    # Among the three IPv6 rows of count 1 the tie order decides who stays: the printed
    # EgressIP first ([fc00:...] < [fd00:...]), then the printed RemoteAddr.
    assert rows == [
        ("ipv4", 50, "172.18.0.4:6443", 2),
        ("ipv4", 294, "104.198.14.52:443", 1),
        ("ipv6", 1, "[fc00:c111::3]", 1),
        ("ipv6", 1, "[fd00:10:244:3::730c]:4240", 2),
    ]


@pytest.mark.parametrize("entries", [0, -1, 4097])
def test_entries_outside_cilium_bounds_are_rejected(entries: int) -> None:
    with pytest.raises(ConfigError, match="--nat-map-stats-entries"):
        compute_nat_stats(seed_counts(), entries=entries)


def test_zero_counts_are_not_rows() -> None:
    counts = {endpoint(Proto.UDP, "192.0.2.1", "198.51.100.1", 53): 0}
    assert compute_nat_stats(counts).rows == ()


# --- property: the heap-based top K equals a full sort -------------------------------

_ips4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
_ips6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)
_endpoints4 = st.builds(
    NatEndpoint,
    st.just(Family.IPV4),
    st.sampled_from([Proto.TCP, Proto.UDP, Proto.ICMP]),
    _ips4,
    _ips4,
    st.integers(0, 65535),
)
_endpoints6 = st.builds(
    NatEndpoint,
    st.just(Family.IPV6),
    st.sampled_from([Proto.TCP, Proto.UDP, Proto.ICMPV6]),
    _ips6,
    _ips6,
    st.integers(0, 65535),
)
# Few distinct counts so that ties are common.
_counts = st.dictionaries(st.one_of(_endpoints4, _endpoints6), st.integers(1, 5), max_size=60)


def printed_order(endpoint: NatEndpoint) -> tuple[str, str, str]:
    """The tie order, written from the seed's table rather than from the code: rows with
    equal counts sort by the EgressIP cell, then the RemoteAddr cell, then Proto, as
    strings; IPv6 addresses are bracketed, a port follows after ':' unless it is 0."""
    def cell(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
        return f"[{ip}]" if ip.version == 6 else str(ip)

    remote = cell(endpoint.remote_ip)
    if endpoint.remote_port:
        remote += f":{endpoint.remote_port}"
    names = {Proto.TCP: "TCP", Proto.UDP: "UDP", Proto.ICMP: "ICMP", Proto.ICMPV6: "ICMPv6"}
    return (cell(endpoint.egress_ip), remote, names[endpoint.proto])


def test_tie_order_oracle_matches_the_seed_table() -> None:
    # The seed's rows with count 1: 10.244.1.160 before 172.18.0.2; for 172.18.0.2,
    # "172.18.0.3" (ICMP) before "172.18.0.3:4240"; "[fd00:10:244:3::730c]:4240" before
    # "[fd00:10:244::915]:4240" (':' < '3' is false: '3' (0x33) < ':' (0x3a)).
    ip = ipaddress.ip_address
    v4 = [
        NatEndpoint(Family.IPV4, Proto.TCP, ip("172.18.0.2"), ip("172.18.0.3"), 4240),
        NatEndpoint(Family.IPV4, Proto.ICMP, ip("172.18.0.2"), ip("172.18.0.3"), 0),
        NatEndpoint(Family.IPV4, Proto.TCP, ip("10.244.1.160"), ip("10.244.3.174"), 4240),
    ]
    assert [printed_order(e)[1] for e in sorted(v4, key=printed_order)] == [
        "10.244.3.174:4240", "172.18.0.3", "172.18.0.3:4240",
    ]
    v6 = [
        NatEndpoint(Family.IPV6, Proto.TCP, ip("fd00:10:244:1::ec5d"), ip("fd00:10:244::915"),
                    4240),
        NatEndpoint(Family.IPV6, Proto.TCP, ip("fd00:10:244:1::ec5d"),
                    ip("fd00:10:244:3::730c"), 4240),
    ]
    assert [printed_order(e)[1] for e in sorted(v6, key=printed_order)] == [
        "[fd00:10:244:3::730c]:4240", "[fd00:10:244::915]:4240",
    ]


def test_top_k_default_is_ciliums_32() -> None:
    # pkg/maps/nat/stats/cell.go: NatMapStatKStoredEntries: 32 (the guide says 30).
    counts = {
        NatEndpoint(Family.IPV4, Proto.TCP, ipaddress.ip_address("192.0.2.1"),
                    ipaddress.ip_address("198.51.100.1"), 1000 + i): i + 1
        for i in range(40)
    }
    stats = compute_nat_stats(counts)
    assert len(stats.rows) == 32
    assert min(r.count for r in stats.rows) == 40 - 32 + 1


@settings(max_examples=150, deadline=None)
@given(_counts, st.integers(1, 70))
def test_top_k_equals_a_full_sort(counts: dict[NatEndpoint, int], k: int) -> None:
    stats = compute_nat_stats(counts, entries=k)
    for family in Family:
        items = [(ep, n) for ep, n in counts.items() if ep.family is family]
        full = sorted(items, key=lambda item: (-item[1], *printed_order(item[0])))[:k]
        assert top_k(items, k) == full
        rows = [r for r in stats.rows if r.family is family]
        by_rank = sorted(rows, key=lambda r: r.rank)
        assert [(r.endpoint, r.count) for r in by_rank] == full
        assert [r.rank for r in by_rank] == list(range(1, len(full) + 1))
        # Display order: ascending count.
        assert [r.count for r in rows] == sorted(r.count for r in rows)
        if full:
            assert stats.saturation[family] == full[0][1] / 32767
    # IPv4 rows come first.
    families = [r.family for r in stats.rows]
    assert families == sorted(families, key=[Family.IPV4, Family.IPV6].index)


def test_document_has_every_field_and_round_trips_through_json_and_yaml() -> None:
    document = stats_document(compute_nat_stats(seed_counts()))
    first = document["rows"][0]
    assert first == {
        "family": "ipv4",
        "proto": "TCP",
        "egressIP": "10.244.1.160",
        "remoteIP": "10.244.3.174",
        "remotePort": 4240,
        "remoteAddr": "10.244.3.174:4240",
        "count": 1,
        "rank": 3,
    }
    icmp6 = next(r for r in document["rows"] if r["proto"] == "ICMPv6")
    assert (icmp6["remoteAddr"], icmp6["remotePort"]) == ("[fc00:c111::3]", 0)
    assert document["saturation"] == {"ipv4": 294 / 32767, "ipv6": 1 / 32767}
    assert document["topCount"] == {"ipv4": 294, "ipv6": 1}
    assert document["divisor"] == 32767
    assert json.loads(dump_document(document, "json")) == document
    assert yaml.safe_load(dump_document(document, "yaml")) == document
    assert dump_document(document, "yaml").startswith("rows:\n- family: ipv4\n")


def test_unknown_document_format_is_rejected() -> None:
    with pytest.raises(ConfigError, match="output"):
        dump_document({}, "xml")
