"""The program's rewrites and checksums, on crafted packets (BPF_PROG_TEST_RUN).

Connections in the lab succeed even with a wrong checksum (veth hands packets over with
the checksum still to be done or already trusted), so this runs the attached programs on
packets built here with correct checksums and checks, with checksums computed here, that
every packet leaves with correct ones: IPv4 header, TCP, UDP, ICMP echo, ICMPv6 echo
(pseudo header), both directions. test_run hands the program a packet whose checksums
are complete (CHECKSUM_NONE), the strict case for incremental updates.
"""

from __future__ import annotations

import ipaddress
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from egressgw.config import NodePortRange
from egressgw.datapath.bpf import BpfDatapath, BpfSettings
from egressgw.datapath.bpf.syscall import BpfProgram
from egressgw.net import Family
from egressgw.policy.rules import EgressRule, RuleKind
from netns import bare_netns, run_in

pytestmark = pytest.mark.kernel

POD4, SERVER4, EGRESS4 = "192.0.2.10", "198.51.100.10", "203.0.113.10"
POD6, SERVER6, EGRESS6 = "2001:db8:1::10", "2001:db8:100::10", "2001:db8:203::10"
TC_ACT_OK = 0
ETH4 = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
ETH6 = b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd"
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58


def fold(data: bytes) -> int:
    """The Internet checksum's one's-complement sum of ``data``, folded to 16 bits."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def checksum(data: bytes) -> int:
    return ~fold(data) & 0xFFFF


def pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!I3xB", length, proto)


def l4(proto: int, sport: int, dport: int, *, request: bool = True, udp_csum: bool = True
       ) -> bytes:
    """A TCP SYN, a UDP datagram or an ICMP(v6) echo, checksum field zero."""
    payload = b"egressgw"
    if proto == TCP:
        return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0) + payload
    if proto == UDP:
        return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    kind = {ICMP: (8, 0), ICMPV6: (128, 129)}[proto][0 if request else 1]
    echo_id = sport if request else dport
    return struct.pack("!BBHHH", kind, 0, 0, echo_id, 1) + payload


CSUM_AT = {TCP: 16, UDP: 6, ICMP: 2, ICMPV6: 2}


def packet(src: str, dst: str, proto: int, segment: bytes, *, udp_csum: bool = True) -> bytes:
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    at = CSUM_AT[proto]
    covered = segment if proto == ICMP else pseudo(s, d, proto, len(segment)) + segment
    value = checksum(covered) if (proto != UDP or udp_csum) else 0
    segment = segment[:at] + struct.pack("!H", value) + segment[at + 2:]
    if len(s) == 4:
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), 7, 0x4000, 64,
                             proto, 0, s, d)
        header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
        return ETH4 + header + segment
    return ETH6 + struct.pack("!IHBB16s16s", 6 << 28, len(segment), proto, 64, s, d) + segment


@dataclass
class Parsed:
    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    ip_ok: bool
    l4_ok: bool
    l4_csum: int


def parse(frame: bytes) -> Parsed:
    if frame[12:14] == b"\x08\x00":
        ip = frame[14:34]
        src, dst, proto, seg = ip[12:16], ip[16:20], ip[9], frame[34:]
        ip_ok = fold(ip) == 0xFFFF
    else:
        ip = frame[14:54]
        src, dst, proto, seg = ip[8:24], ip[24:40], ip[6], frame[54:]
        ip_ok = True  # IPv6 has no header checksum
    csum = struct.unpack("!H", seg[CSUM_AT[proto]:CSUM_AT[proto] + 2])[0]
    covered = seg if proto == ICMP else pseudo(src, dst, proto, len(seg)) + seg
    l4_ok = (proto == UDP and csum == 0) or fold(covered) == 0xFFFF
    if proto in (TCP, UDP):
        sport, dport = struct.unpack("!HH", seg[:4])
    else:
        sport = dport = struct.unpack("!H", seg[4:6])[0]
    return Parsed(str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)), proto,
                  sport, dport, ip_ok, l4_ok, csum)


@pytest.fixture(scope="module")
def programs() -> Iterator[tuple[BpfProgram, BpfProgram, BpfDatapath]]:
    if shutil.which("clang") is None or shutil.which("bpftool") is None:
        pytest.skip("the BPF datapath needs clang and bpftool (scripts/test.sh installs them)")
    with bare_netns() as ns:
        run_in(ns, ["ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1"])
        run_in(ns, ["ip", "addr", "add", f"{EGRESS4}/32", "dev", "up0"])
        run_in(ns, ["ip", "addr", "add", f"{EGRESS6}/128", "dev", "up0", "nodad"])
        run_in(ns, ["ip", "link", "set", "up0", "up"])
        dp = BpfDatapath(BpfSettings(NodePortRange(), netns=ns))
        rules = [EgressRule(ipaddress.ip_address(pod), ipaddress.ip_network(net),
                            RuleKind.MASQUERADE, ipaddress.ip_address(egress), "gw")
                 for pod, net, egress in ((POD4, "198.51.100.0/24", EGRESS4),
                                          (POD6, "2001:db8:100::/64", EGRESS6))]
        egress = ingress = None
        try:
            dp.apply(rules)
            egress = BpfProgram.open_pinned(str(dp.pin_dir / "progs" / "egw_egress"))
            ingress = BpfProgram.open_pinned(str(dp.pin_dir / "progs" / "egw_ingress"))
            yield egress, ingress, dp
        finally:
            for prog in (egress, ingress):
                if prog is not None:
                    prog.close()
            dp.cleanup()


CASES = [
    pytest.param(POD4, SERVER4, EGRESS4, TCP, id="tcp4"),
    pytest.param(POD4, SERVER4, EGRESS4, UDP, id="udp4"),
    pytest.param(POD4, SERVER4, EGRESS4, ICMP, id="icmp4"),
    pytest.param(POD6, SERVER6, EGRESS6, TCP, id="tcp6"),
    pytest.param(POD6, SERVER6, EGRESS6, UDP, id="udp6"),
    pytest.param(POD6, SERVER6, EGRESS6, ICMPV6, id="icmp6"),
]


@pytest.mark.parametrize(("pod", "server", "egress_ip", "proto"), CASES)
def test_both_directions_leave_with_correct_checksums(programs, pod: str, server: str,
                                                      egress_ip: str, proto: int) -> None:
    egress, ingress, dp = programs
    # Port 1234 is outside the NAT range (32768..65535): the program must pick another.
    out_verdict, out = egress.run(packet(pod, server, proto, l4(proto, 1234, 80)))
    assert out_verdict == TC_ACT_OK
    sent = parse(out)
    assert (sent.src, sent.dst, sent.ip_ok, sent.l4_ok) == (egress_ip, server, True, True)
    nat_port = sent.sport
    assert 32768 <= nat_port <= 65535
    if proto in (TCP, UDP):
        assert sent.dport == 80
    # The map says the same: an IN entry for the reply to nat_port.
    family = Family.IPV4 if ":" not in pod else Family.IPV6
    (table,) = [t for t in dp.nat_tables() if t.family is family]
    in_ports = {int(p) for p in table.keys["dport"][table.keys["flags"] == 1]}
    assert nat_port in in_ports
    # The reply comes back to the egress IP and the NAT port, and leaves for the pod.
    reply_l4 = l4(proto, 80, nat_port, request=False)
    in_verdict, back = ingress.run(packet(server, egress_ip, proto, reply_l4))
    assert in_verdict == TC_ACT_OK
    got = parse(back)
    assert (got.src, got.dst, got.ip_ok, got.l4_ok) == (server, pod, True, True)
    assert got.dport == 1234


def test_udp_without_checksum_keeps_none(programs) -> None:
    egress, _ingress, _dp = programs
    frame = packet(POD4, SERVER4, UDP, l4(UDP, 1235, 53), udp_csum=False)
    verdict, out = egress.run(frame)
    sent = parse(out)
    assert verdict == TC_ACT_OK and sent.src == EGRESS4 and sent.l4_csum == 0 and sent.ip_ok


def test_traffic_outside_the_policies_passes_untouched(programs) -> None:
    egress, ingress, _dp = programs
    other = packet("192.0.2.11", SERVER4, TCP, l4(TCP, 1234, 80))  # no rule for this pod
    assert egress.run(other) == (TC_ACT_OK, other)
    stray = packet(SERVER4, EGRESS4, TCP, l4(TCP, 80, 40000, request=False))  # no mapping
    assert ingress.run(stray) == (TC_ACT_OK, stray)
