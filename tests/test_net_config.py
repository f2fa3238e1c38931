import ipaddress

import pytest

from egressgw.config import NodePortRange, check_stats_entries, parse_duration
from egressgw.errors import ConfigError
from egressgw.net import Endpoint, Family, FiveTuple, Proto, format_addr
from egressgw.render.tabwriter import tabwrite


def test_default_node_port_range_gives_the_seed_limit():
    r = NodePortRange()
    assert (r.nat_min, r.nat_max, r.nat_ports) == (32768, 65535, 32768)
    assert r.cilium_saturation_divisor == 32767


@pytest.mark.parametrize("text", ["", "30000", "32767,30000", "0,10", "30000,65535", "a,b"])
def test_bad_node_port_range_names_the_flag(text):
    with pytest.raises(ConfigError, match="--node-port-range"):
        NodePortRange.parse(text)


def test_node_port_range_accepts_both_separators():
    assert NodePortRange.parse("30000,65471") == NodePortRange.parse("30000-65471")
    assert NodePortRange.parse("30000,65471").nat_ports == 64


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("1m30s", 90), ("2h", 7200),
                                               ("250ms", 0.25), ("0", 0), ("45", 45)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30x", "s", "1m 30s", "-5s"])
def test_bad_durations(text):
    with pytest.raises(ConfigError):
        parse_duration(text, field="--nat-map-stats-interval")


def test_stats_entries_bounds():
    assert check_stats_entries(1) == 1
    assert check_stats_entries(4096) == 4096
    for bad in (0, 4097):
        with pytest.raises(ConfigError, match="--nat-map-stats-entries"):
            check_stats_entries(bad)


def test_endpoints_and_tuples():
    v6 = Endpoint.parse("[2001:db8::1]:443")
    assert v6.ip == ipaddress.ip_address("2001:db8::1") and v6.port == 443
    assert str(v6) == "[2001:db8::1]:443"
    assert Endpoint.parse("192.0.2.1:80").family is Family.IPV4
    assert Endpoint.parse("192.0.2.1").port == 0
    assert format_addr(ipaddress.ip_address("fc00::3"), 0) == "[fc00::3]"
    t = FiveTuple(Proto.TCP, Endpoint.parse("192.0.2.1:1000"), Endpoint.parse("198.51.100.1:80"))
    assert t.reversed().reversed() == t
    with pytest.raises(ValueError, match="families"):
        FiveTuple(Proto.TCP, Endpoint.parse("192.0.2.1:1"), Endpoint.parse("[2001:db8::1]:1"))
    with pytest.raises(ValueError):
        Endpoint(ipaddress.ip_address("192.0.2.1"), 70000)


def test_proto_parse_and_labels():
    assert Proto.parse("tcp") is Proto.TCP
    assert Proto.parse("icmp6") is Proto.ICMPV6
    assert Proto.parse("17") is Proto.UDP
    assert Proto.ICMPV6.label == "ICMPv6"
    with pytest.raises(ValueError, match="unknown protocol"):
        Proto.parse("sctp")


def test_tabwriter_matches_go_rules():
    # minwidth 6, padding 3: "a" -> 6 wide, "abcdef" -> 9 wide; the last cell is unpadded.
    text = tabwrite([["a", "abcdef", "x"], ["bb", "c", "yy"]])
    assert text == "a     abcdef   x\nbb    c        yy\n"
    # A shorter row ends the column block above it.
    assert tabwrite([["abcdefgh", "1"], ["z"], ["q", "2"]]) == "abcdefgh   1\nz\nq     2\n"
