"""The kernel datapath for real: nftables SNAT in the lab gateway, conntrack as NAT table.

With --node-port-range 30000,65471 only 64 NAT ports (65472..65535) remain, so port
exhaustion is reached with 64 connections. The kernel's port search (nf_nat
``nf_nat_l4proto_unique_tuple``) tries ``min(range, 128)`` consecutive ports from a
random offset before giving up; with 64 ports that is every port of the range, so
connections opened one after another (each confirmed before the next is NATed) are
guaranteed to get all 64 ports, and the 65th is dropped at conntrack confirm
(insert_failed, drop). Connections opened concurrently could, in rare cases, pick the
same free port before either is confirmed; the tests open them one at a time.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from egressgw.config import NodePortRange
from egressgw.datapath.kernel import KernelDatapath
from egressgw.errors import DatapathError
from egressgw.lab import Lab, lab_rules
from egressgw.net import Family, NatEndpoint, Proto, parse_ip
from egressgw.stats import compute_nat_stats
from netns import lab, popen_in  # noqa: F401  (lab: module fixture)

pytestmark = pytest.mark.kernel

PORTS_64 = NodePortRange(30000, 65471)
SERVER4, SERVER6 = "198.51.100.10", "2001:db8:100::10"


@pytest.fixture
def datapath(lab: Lab) -> Iterator[KernelDatapath]:  # noqa: F811
    """A datapath in the lab gateway with 64 NAT ports; a clean table and conntrack."""
    lab.flush_conntrack()
    dp = lab.datapath(PORTS_64)
    try:
        yield dp
    finally:
        dp.cleanup()
        lab.flush_conntrack()


def endpoint(egress: str, remote: str, port: int, proto: Proto = Proto.TCP) -> NatEndpoint:
    egress_ip, remote_ip = parse_ip(egress), parse_ip(remote)
    return NatEndpoint(Family.of(egress_ip), proto, egress_ip, remote_ip, port)


def test_64_ports_give_64_connections_then_failures(lab: Lab, datapath: KernelDatapath):  # noqa: F811
    egress = lab.topology.egress4[0]
    datapath.apply(lab_rules(lab.topology, [egress]))
    before = datapath.conntrack_stats()
    with lab.start_load(f"{SERVER4}:443", 64, parallel=1, timeout=2) as held:
        assert held.result.succeeded == 64
        assert held.result.seen_as == {egress: 64}
        extra = lab.load(f"{SERVER4}:443", 3, parallel=3, timeout=1)
        assert extra.succeeded == 0
        assert extra.errors == {"timeout": 3}

        counts = datapath.endpoint_counts()
        assert counts[endpoint(egress, SERVER4, 443)] == 64
        after = datapath.conntrack_stats()
        assert after["insert_failed"] - before["insert_failed"] >= 3
        assert after["drop"] - before["drop"] >= 3
        stats = compute_nat_stats(counts, divisor=PORTS_64.nat_ports)
        assert stats.saturation[Family.IPV4] == 1.0
        # Another remote port is another tuple: its ports are all free.
        assert lab.load(f"{SERVER4}:80", 1).succeeded == 1


def test_two_egress_ips_split_the_pods(lab: Lab, datapath: KernelDatapath):  # noqa: F811
    t = lab.topology
    datapath.apply(lab_rules(t, t.egress4[:2], pods=t.pods4[:2]))
    first = lab.load(f"{SERVER4}:80", 5, pod=t.pods4[0])
    second = lab.load(f"{SERVER4}:80", 7, pod=t.pods4[1])
    assert first.seen_as == {t.egress4[0]: 5}
    assert second.seen_as == {t.egress4[1]: 7}
    # Closed TCP connections linger in TIME_WAIT, still holding their NAT ports.
    counts = datapath.endpoint_counts()
    assert counts[endpoint(t.egress4[0], SERVER4, 80)] == 5
    assert counts[endpoint(t.egress4[1], SERVER4, 80)] == 7


def test_excluded_cidr_is_not_masqueraded(lab: Lab, datapath: KernelDatapath):  # noqa: F811
    t = lab.topology
    other = t.servers4[1]
    datapath.apply(lab_rules(t, t.egress4[:1], excluded=[f"{other}/32"]))
    assert lab.load(f"{other}:80", 2).seen_as == {t.pods4[0]: 2}
    assert lab.load(f"{SERVER4}:80", 2).seen_as == {t.egress4[0]: 2}
    counted = {ep.remote_ip for ep in datapath.endpoint_counts()}
    assert counted == {parse_ip(SERVER4)}


def test_no_gateway_drops_the_traffic(lab: Lab, datapath: KernelDatapath):  # noqa: F811
    datapath.apply(lab_rules(lab.topology, [], no_gateway=True))
    result = lab.load(f"{SERVER4}:80", 2, timeout=0.5)
    assert result.succeeded == 0 and result.errors == {"timeout": 2}
    assert "counter packets 0 " not in datapath.ruleset().split("nogw4 counter")[1].split("\n")[0]
    assert datapath.endpoint_counts() == {}


def test_ipv6_end_to_end(lab: Lab, datapath: KernelDatapath):  # noqa: F811
    t = lab.topology
    egress = t.egress6[0]
    datapath.apply(lab_rules(t, [egress]))
    assert lab.load(f"[{SERVER6}]:443", 4).seen_as == {egress: 4}
    assert lab.load(f"[{SERVER6}]:53", 3, proto="udp").seen_as == {egress: 3}
    assert lab.load(SERVER6, 2, proto="icmp").succeeded == 2
    counts = datapath.endpoint_counts()
    assert counts[endpoint(egress, SERVER6, 443)] == 4
    assert counts[endpoint(egress, SERVER6, 53, Proto.UDP)] == 3
    assert counts[endpoint(egress, SERVER6, 0, Proto.ICMPV6)] == 2


def test_udp_and_icmp_are_counted(lab: Lab, datapath: KernelDatapath):  # noqa: F811
    egress = lab.topology.egress4[0]
    datapath.apply(lab_rules(lab.topology, [egress]))
    assert lab.load(f"{SERVER4}:53", 6, proto="udp").seen_as == {egress: 6}
    assert lab.load(SERVER4, 3, proto="icmp").succeeded == 3
    counts = datapath.endpoint_counts()
    assert counts[endpoint(egress, SERVER4, 53, Proto.UDP)] == 6
    assert counts[endpoint(egress, SERVER4, 0, Proto.ICMP)] == 3


def test_rejected_transaction_keeps_rules_and_connections(
    lab: Lab, datapath: KernelDatapath  # noqa: F811
):
    t = lab.topology
    egress = t.egress4[0]
    rules = lab_rules(t, [egress])
    datapath.apply(rules)
    listed = datapath.ruleset()
    with lab.start_load(f"{SERVER4}:8080", 5, parallel=1) as held:
        assert held.result.succeeded == 5
        valid = datapath.render(lab_rules(t, t.egress4[1:2]))
        broken = valid + "add rule inet egressgw nope drop\n"
        with pytest.raises(DatapathError, match="nope"):
            datapath.load(broken)
        assert datapath.ruleset() == listed
        assert datapath.endpoint_counts()[endpoint(egress, SERVER4, 8080)] == 5
        assert lab.load(f"{SERVER4}:8080", 1).seen_as == {egress: 1}


def test_apply_touches_nothing_but_its_table(lab: Lab, datapath: KernelDatapath):  # noqa: F811
    lab.exec("gateway", ["nft", "add table ip someone_else; add chain ip someone_else c"])
    try:
        datapath.apply(lab_rules(lab.topology, lab.topology.egress4[:1]))
        datapath.apply(lab_rules(lab.topology, lab.topology.egress4[1:2]))
        datapath.cleanup()
        tables = lab.exec("gateway", ["nft", "list", "tables"])
        assert "table ip someone_else" in tables
        assert "egressgw" not in tables
    finally:
        lab.exec("gateway", ["nft", "delete table ip someone_else"], check=False)


# Connects from a pod, prints the server's greeting, then on each line read from stdin
# sends it and prints the echo: a connection the test can keep using across applies.
CHATTY_CLIENT = """
import socket, sys
pod, server, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
conn = socket.create_connection((server, port), timeout=5, source_address=(pod, 0))
reader = conn.makefile("r")
print(reader.readline().split()[0], flush=True)
for line in sys.stdin:
    conn.sendall(line.encode())
    print(reader.readline().strip(), flush=True)
"""


def test_reapplying_or_moving_the_egress_ip_keeps_open_connections(
    lab: Lab, datapath: KernelDatapath  # noqa: F811
):
    """Tracked connections keep their NAT mapping: conntrack holds it, not the ruleset."""
    t = lab.topology
    datapath.apply(lab_rules(t, t.egress4[:1]))
    client = popen_in(t.client_ns, [sys.executable, "-c", CHATTY_CLIENT, t.pods4[0], SERVER4,
                                    "80"])
    try:
        assert client.stdin is not None and client.stdout is not None
        assert client.stdout.readline().strip() == t.egress4[0]
        datapath.apply(lab_rules(t, t.egress4[:1]))  # what a restarted agent does
        client.stdin.write("after reapply\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "after reapply"
        datapath.apply(lab_rules(t, t.egress4[1:2]))  # the pod moves to another egress IP
        client.stdin.write("after move\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "after move"
        # The open connection stays behind the old egress IP; new ones use the new one.
        assert lab.load(f"{SERVER4}:80", 1).seen_as == {t.egress4[1]: 1}
        counts = datapath.endpoint_counts()
        assert counts[endpoint(t.egress4[0], SERVER4, 80)] == 1
    finally:
        client.kill()
        client.wait()


@pytest.mark.parametrize("extra", [1, 5])
def test_failures_count_attempts_once_and_dropped_packets_apart(
    lab: Lab, datapath: KernelDatapath, extra: int  # noqa: F811
) -> None:
    """N connections beyond the limit are N failed attempts, however often each client
    retransmits its SYN (at 1 s and 3 s within a 3.5 s timeout); every retransmission is a
    dropped packet."""
    egress = lab.topology.egress4[0]
    datapath.apply(lab_rules(lab.topology, [egress]))
    failed_before = datapath.allocation_failures()
    drops_before = datapath.drop_counts()
    with lab.start_load(f"{SERVER4}:443", 64, parallel=1, timeout=2) as held:
        assert held.result.succeeded == 64
        refused = lab.load(f"{SERVER4}:443", extra, parallel=extra, timeout=3.5)
        assert refused.succeeded == 0
        failed = datapath.allocation_failures()
        drops = datapath.drop_counts()
    (reason,) = failed
    assert failed[reason] - failed_before.get(reason, 0) == extra
    dropped = drops["conntrack insert_failed"] - drops_before["conntrack insert_failed"]
    print(f"{extra} refused connections: {failed[reason]} failed attempts, {dropped} "
          "dropped packets")
    assert dropped >= 2 * extra  # the SYN and at least one retransmission each
    assert drops["conntrack drop (other)"] == drops_before["conntrack drop (other)"]
