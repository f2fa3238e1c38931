"""``conntrack -L`` dumps: real captured output, variants, masquerade detection, bad lines."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from egressgw.dumps import count_endpoints, iter_entries
from egressgw.errors import InputError
from egressgw.net import Direction, Endpoint, Family, NatEndpoint, Proto, parse_ip

GOLDEN = Path(__file__).parent / "golden"


def ep(proto: Proto, egress: str, remote: str, port: int = 0) -> NatEndpoint:
    ip = parse_ip(egress)
    return NatEndpoint(Family.of(ip), proto, ip, parse_ip(remote), port)


# What tests/golden/capture_conntrack.py does through the gateway (see its docstring).
CAPTURED = {
    ep(Proto.TCP, "198.51.100.1", "198.51.100.2", 8080): 3,
    ep(Proto.UDP, "198.51.100.1", "198.51.100.2", 5353): 1,
    ep(Proto.UDP, "198.51.100.1", "198.51.100.2", 9): 1,
    ep(Proto.ICMP, "198.51.100.1", "198.51.100.2"): 1,
    ep(Proto.TCP, "2001:db8:2::1", "2001:db8:2::2", 8080): 1,
    ep(Proto.ICMPV6, "2001:db8:2::1", "2001:db8:2::2"): 1,
}


def test_real_capture_counts_the_masqueraded_connections() -> None:
    data = (GOLDEN / "conntrack-L.txt").read_bytes()
    dump = count_endpoints(data, source="conntrack-L.txt")
    assert dump.format == "conntrack"
    assert dump.counts == CAPTURED
    # The ping of the gateway itself is tracked but not source-NATed.
    assert b"dst=192.0.2.1 type=8" in data


def test_bundled_conntrack_example_is_the_real_capture() -> None:
    example = GOLDEN.parents[1] / "src/egressgw/examples/gateway-conntrack-L.txt"
    assert count_endpoints(example.read_bytes(), source=str(example)).counts == CAPTURED


def test_extended_output_and_the_summary_line_count_the_same() -> None:
    extended = (GOLDEN / "conntrack-L-extended.txt").read_bytes()
    assert extended.startswith(b"ipv")
    assert count_endpoints(extended, source="x").counts == CAPTURED
    with_summary = (GOLDEN / "conntrack-L.txt").read_bytes() + (
        GOLDEN / "conntrack-L.stderr.txt"
    ).read_bytes()
    assert b"flow entries have been shown." in with_summary
    assert count_endpoints(with_summary, source="x").counts == CAPTURED


def test_entries_of_a_masqueraded_connection_mirror_cilium() -> None:
    entries = list(iter_entries((GOLDEN / "conntrack-L.txt").read_bytes(), source="x"))
    assert len(entries) == 2 * sum(CAPTURED.values())
    assert [e.direction for e in entries[:2]] == [Direction.OUT, Direction.IN]
    tcp = [e for e in entries if e.tuple.proto is Proto.TCP and e.tuple.family is Family.IPV4]
    for out, back in zip(tcp[::2], tcp[1::2], strict=True):
        assert out.tuple.src.ip == parse_ip("192.0.2.2")
        assert out.xlate == back.tuple.dst
        assert back.xlate == out.tuple.src
        assert back.tuple.src == Endpoint(parse_ip("198.51.100.2"), 8080)
    icmp = [e for e in entries if e.tuple.proto is Proto.ICMP]
    assert [(e.tuple.src.port, e.tuple.dst.port) for e in icmp] == [(4242, 0), (0, 4242)]


VARIANTS = [
    # zone, secctx, offload flags and labels after the reply tuple
    "tcp      6 117 TIME_WAIT src=192.0.2.7 dst=203.0.113.9 sport=40000 dport=443 "
    "src=203.0.113.9 dst=198.51.100.1 sport=443 dport=61000 [ASSURED] [OFFLOAD] mark=3 "
    "secctx=system_u:object_r:unlabeled_t:s0 zone=2 use=1",
    # directional zones print after each tuple
    "tcp      6 431999 ESTABLISHED src=192.0.2.7 dst=203.0.113.9 sport=40003 dport=443 "
    "zone-orig=1 src=203.0.113.9 dst=198.51.100.1 sport=443 dport=40003 zone-reply=2 "
    "[ASSURED] mark=0 use=1",
    # a SYN that got no answer yet
    "tcp      6 119 SYN_SENT src=192.0.2.8 dst=203.0.113.9 sport=40001 dport=443 [UNREPLIED] "
    "src=203.0.113.9 dst=198.51.100.1 sport=443 dport=40001 mark=0 use=1",
    # DNAT only (a service): the reply goes back to the original source, not counted
    "tcp      6 300 ESTABLISHED src=192.0.2.9 dst=198.51.100.80 sport=40002 dport=80 "
    "src=10.0.0.5 dst=192.0.2.9 sport=8080 dport=40002 [ASSURED] mark=0 use=1",
    # protocols nat-stats does not count
    "sctp     132 3 ESTABLISHED src=192.0.2.7 dst=203.0.113.9 sport=5000 dport=5000 "
    "src=203.0.113.9 dst=198.51.100.1 sport=5000 dport=5000 [ASSURED] mark=0 use=1",
    "gre      47 179 src=192.0.2.7 dst=203.0.113.9 srckey=0x0 dstkey=0x0 "
    "src=203.0.113.9 dst=198.51.100.1 srckey=0x0 dstkey=0x0 [ASSURED] mark=0 use=1",
    "unknown  2 599 src=192.0.2.7 dst=224.0.0.22 [UNREPLIED] src=224.0.0.22 dst=192.0.2.7 "
    "mark=0 use=1",
]


def test_conntrack_variants() -> None:
    dump = count_endpoints("\n".join(VARIANTS).encode(), source="v.txt")
    assert dump.counts == {ep(Proto.TCP, "198.51.100.1", "203.0.113.9", 443): 3}
    assert dump.lines == len(VARIANTS)
    entries = list(iter_entries("\n".join(VARIANTS).encode(), source="v.txt"))
    assert len(entries) == 6


GARBLED = [
    ("truncated", VARIANTS[0][:60]),
    ("no-reply", VARIANTS[0].split(" src=203.0.113.9")[0]),
    ("octet", VARIANTS[0].replace("198.51.100.1", "198.51.100.256")),
    ("mixed", VARIANTS[0].replace("198.51.100.1", "2001:db8::1")),
    ("port", VARIANTS[0].replace("sport=443 dport=61000", "sport=99999 dport=61000")),
    ("junk", "this is not conntrack"),
]


@pytest.mark.parametrize(("why", "bad"), GARBLED, ids=[g[0] for g in GARBLED])
def test_a_garbled_line_is_named_by_file_and_line(why: str, bad: str) -> None:
    data = "\n".join([VARIANTS[0], VARIANTS[2], bad, VARIANTS[3]]).encode()
    with pytest.raises(InputError) as caught:
        count_endpoints(data, source="ct.txt")
    assert str(caught.value).startswith("ct.txt:3: ")
    with pytest.raises(InputError, match=r"^ct.txt:3: "):
        list(iter_entries(data, source="ct.txt"))
    skipped = count_endpoints(data, source="ct.txt", skip_invalid=True)
    assert skipped.skipped == 1
    assert skipped.counts == {ep(Proto.TCP, "198.51.100.1", "203.0.113.9", 443): 2}


def _capture_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("capture", GOLDEN / "capture_conntrack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.kernel
def test_live_capture_in_network_namespaces() -> None:
    """The fixture's generator, run for real: masquerade in a namespace, read conntrack -L."""
    outputs = _capture_module().capture()
    for name in ("conntrack-L.txt", "conntrack-L-extended.txt"):
        dump = count_endpoints(outputs[name].encode(), source=name, fmt="auto")
        assert dump.counts == CAPTURED, name
    assert "flow entries have been shown" in outputs["conntrack-L.stderr.txt"]
