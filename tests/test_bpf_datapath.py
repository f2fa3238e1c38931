"""The BPF datapath on real packets: a tc program with Cilium's SNAT on a lab gateway.

Expected values come from Cilium's arithmetic (bpf/lib/nat.h), not from the code under
test: with --node-port-range 30000,65471 the NAT range is 65472..65535 (64 ports), and
v1.16's clamp ``(v % (end - start)) + start`` = ``(v % 63) + 65472`` reaches 63 of them
(never 65535), while its +1 walk visits all 63 within 128 tries. So exactly 63
connections to one server endpoint get a port and the 64th is refused with reason 167.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bpf_support import Client, server_out_rsts
from egressgw.config import NodePortRange
from egressgw.datapath.bpf import BpfDatapath, BpfSettings
from egressgw.datapath.bpf.datapath import NO_MAPPING_REASON, REMAPPED_REASON
from egressgw.datapath.bpf.natmap import NatTable, iter_nat_list
from egressgw.errors import ConfigError, DatapathError
from egressgw.lab import Lab, lab_rules
from egressgw.net import Family
from egressgw.stats import compute_nat_stats, render_table
from netns import lab, run_in  # noqa: F401  (lab: module fixture)

pytestmark = pytest.mark.kernel
BPF_TOOLS = ("clang", "bpftool")


@pytest.fixture(autouse=True)
def _bpf_tools() -> None:
    """CI installs clang and bpftool (scripts/test.sh); elsewhere their absence skips."""
    missing = [tool for tool in BPF_TOOLS if shutil.which(tool) is None]
    if missing and not os.environ.get("CI"):
        pytest.skip(f"the BPF datapath needs {', '.join(missing)} (apt-get install clang "
                    "llvm libbpf-dev bpftool); CI runs these tests")

PORTS_64 = NodePortRange(30000, 65471)
# NAT ports 61000..65535: outside Linux's ephemeral range (32768..60999), so a client's
# own port is never kept and every new mapping draws a random port.
PORTS_ABOVE_EPHEMERAL = NodePortRange(30000, 60999)
SERVER = "198.51.100.10"


def egressgw(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    main = "import sys; from egressgw.cli import main; main(sys.argv[1:])"
    done = subprocess.run([sys.executable, "-c", main, *args], input=stdin,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture
def bpf(lab: Lab) -> Iterator[BpfDatapath]:  # noqa: F811
    """A factory-made BPF datapath on the lab gateway, cleaned up afterwards."""
    made: list[BpfDatapath] = []

    def make(ports: NodePortRange, **settings: object) -> BpfDatapath:
        dp = BpfDatapath(BpfSettings(ports, netns=lab.topology.gateway_ns,
                                     **settings))  # type: ignore[arg-type]
        made.append(dp)
        t = lab.topology
        dp.apply(lab_rules(t, [t.egress4[0], t.egress6[0]]))
        return dp

    yield make  # type: ignore[misc]
    for dp in made:
        dp.close()
    BpfDatapath(BpfSettings(netns=lab.topology.gateway_ns)).cleanup()


@pytest.mark.parametrize(("to", "family"), [(f"{SERVER}:443", Family.IPV4),
                                            ("[2001:db8:100::10]:443", Family.IPV6)])
def test_v116_exhaustion_refuses_the_64th_connection_with_reason_167(
        lab: Lab, bpf, to: str, family: Family) -> None:  # noqa: F811
    dp = bpf(PORTS_64, cilium_version="1.16")
    # 2 s: a connection that gets a port never fails for being slow on a busy machine.
    result = lab.load(to, 70, parallel=1, timeout=2)
    # 63 reachable ports: the 64th connection and every later one are refused.
    assert result.succeeded == 63
    assert result.failed == 7
    t = lab.topology
    egress = t.egress4[0] if family is Family.IPV4 else t.egress6[0]
    assert result.seen_as == {egress: 63}
    # Each refused SYN is one drop (a retransmission would add more, never fewer).
    assert dp.allocation_failures()[NO_MAPPING_REASON] >= 7
    counts = dp.endpoint_counts()
    assert list(counts.values()) == [63]
    (table,) = [tb for tb in dp.nat_tables() if tb.family is family]
    ports = sorted(int(p) for p in table.keys["dport"][table.keys["flags"] == 1])
    # v1.16's clamp never yields the top of the range.
    assert ports == list(range(65472, 65535))
    # Refused searches used every try (128), the others fewer.
    hist = dp.retries_histogram(family)
    assert hist.get(128, 0) >= 7
    assert sum(n for tries, n in hist.items() if tries < 128) == 63


def test_v118_walk_sticks_at_the_top_port_and_refuses_early(lab: Lab, bpf) -> None:  # noqa: F811
    """v1.17+'s clamp maps port + 1 of any port in 65472..65535 to 65535 (the walk is
    stuck there), so after the first random pick a search only retries one port: refusals
    begin long before the range is full."""
    dp = bpf(PORTS_64, cilium_version="1.18")
    result = lab.load(f"{SERVER}:443", 64, parallel=1, timeout=1)
    assert 0 < result.succeeded < 64
    assert result.failed == 64 - result.succeeded
    assert dp.allocation_failures()[NO_MAPPING_REASON] >= result.failed
    hist = dp.retries_histogram(Family.IPV4)
    assert max(hist) <= 32  # v1.18's SNAT_COLLISION_RETRIES
    (table,) = [t for t in dp.nat_tables() if t.family is Family.IPV4]
    ports = {int(p) for p in table.keys["dport"][table.keys["flags"] == 1]}
    assert 65535 in ports  # reachable with v1.17+'s clamp, never with v1.16's


def test_nat_list_read_back_by_nat_stats_agrees_with_the_map(lab: Lab, bpf) -> None:  # noqa: F811
    dp = bpf(PORTS_64)
    t = lab.topology
    lab.load(f"{SERVER}:443", 20, parallel=1, timeout=2)
    lab.load(f"{SERVER}:53", 5, proto="udp")
    lab.load("[2001:db8:100::10]:80", 4)
    lab.load("2001:db8:100::10", 3, proto="icmp")
    listing = egressgw("bpf", "nat", "list", "--netns", t.gateway_ns).stdout
    assert listing.endswith("\n\n")
    from_dump = egressgw("nat-stats", "--from", "-", "--node-port-range", str(PORTS_64),
                         stdin=listing)
    counts = dp.endpoint_counts()
    stats = compute_nat_stats(counts, entries=30, divisor=PORTS_64.cilium_saturation_divisor)
    assert from_dump.stdout == render_table(stats.rows)
    by_remote = {(e.proto.label, e.remote_addr): n for e, n in counts.items()}
    assert by_remote[("TCP", f"{SERVER}:443")] == 20
    assert by_remote[("UDP", f"{SERVER}:53")] == 5
    assert by_remote[("TCP", "[2001:db8:100::10]:80")] == 4
    assert by_remote[("ICMPv6", "[2001:db8:100::10]")] == 3
    # Every line is Cilium's shape and each connection has its OUT and IN entry.
    lines = [line for line in listing.splitlines() if line]
    assert len(lines) == 2 * (20 + 5 + 4 + 3)
    assert all(" XLATE_" in line and line.endswith("NeedsCT=1") for line in lines)
    assert "saturation ipv4: 31.75% (20/63)" in from_dump.stderr


def test_eviction_breaks_an_old_connection_and_is_counted(lab: Lab, bpf) -> None:  # noqa: F811
    # The kernel's LRU is approximate (reference bits, per-CPU free lists): only churn of
    # about twice the map's size makes the eviction of the oldest entries certain (with
    # 64 entries and 48 connections, one loaded run kept all the old ones).
    dp = bpf(PORTS_ABOVE_EPHEMERAL, nat_global_max=512)
    client = Client(lab, 8080)
    try:
        first = client.ask("open 32")
        assert all(first), first
        # 480 more connections need 960 more entries: the map (512) evicts the oldest.
        assert all(client.ask("open 480"))
        for table in dp.nat_tables():
            assert len(table) <= 512
        rsts_before = server_out_rsts(lab)
        outcome = client.ask("poke 32")
        rsts = server_out_rsts(lab) - rsts_before
    finally:
        client.close()
    broken = [i for i, o in enumerate(outcome) if o != "ok"]
    assert broken, outcome
    resets = [i for i in broken if outcome[i] == "reset"]
    assert resets, outcome
    # The server saw segments of tuples it never accepted (the old connections' new
    # source ports) and answered each with a reset. (Had only an IN entry gone, the reply
    # would have reached the gateway itself and the client would time out instead.)
    assert rsts >= len(resets)
    assert dp.allocation_failures()[REMAPPED_REASON] >= len(resets)


def test_a_restart_keeps_maps_and_connections_and_cleanup_removes_all(
        lab: Lab, bpf) -> None:  # noqa: F811
    t = lab.topology
    dp = bpf(PORTS_64)
    pin_dir = dp.pin_dir
    map_id = dp.maps["snat_v4"].info.id
    prog = subprocess.run(["bpftool", "-j", "prog", "show", "pinned",
                           str(pin_dir / "progs" / "egw_egress")],
                          capture_output=True, text=True, check=True)
    prog_id = json.loads(prog.stdout)["id"]
    client = Client(lab, 8080)
    try:
        assert all(client.ask("open 5"))
        dp.close()  # the agent exits
        again = BpfDatapath(BpfSettings(PORTS_64, netns=t.gateway_ns))
        again.apply(lab_rules(t, [t.egress4[0], t.egress6[0]]))  # the next agent starts
        assert again.maps["snat_v4"].info.id == map_id
        prog = subprocess.run(["bpftool", "-j", "prog", "show", "pinned",
                               str(pin_dir / "progs" / "egw_egress")],
                              capture_output=True, text=True, check=True)
        assert json.loads(prog.stdout)["id"] == prog_id
        assert client.ask("poke 5") == ["ok"] * 5
        assert list(again.endpoint_counts().values()) == [5]
    finally:
        client.close()
    again.cleanup()
    assert not pin_dir.exists()
    shown = run_in(t.gateway_ns, ["tc", "filter", "show", "dev", "ext0", "egress"]).stdout
    assert shown.strip() == ""
    # The kernel frees the program, then the map, after an RCU grace period.
    deadline = time.monotonic() + 10
    while subprocess.run(["bpftool", "map", "show", "id", str(map_id)],
                         capture_output=True, check=False).returncode == 0:
        assert time.monotonic() < deadline, f"map {map_id} still exists"
        time.sleep(0.1)
    # Without the program the gateway only routes: the server sees the pod.
    assert lab.load(f"{SERVER}:80", 1).seen_as == {t.pods4[0]: 1}


def test_nat_list_lines_are_cilium_dbg_lines(lab: Lab, bpf) -> None:  # noqa: F811
    dp = bpf(PORTS_64)
    t = lab.topology
    result = lab.load(f"{SERVER}:443", 1)
    assert result.succeeded == 1
    (table,) = [tb for tb in dp.nat_tables() if tb.family is Family.IPV4]
    # Only this connection's entries: a late FIN of an earlier test's connection (closed
    # after its program was detached) may have made a mapping of its own.
    keys = table.keys
    to_443 = ((keys["flags"] == 1) & (keys["sport"] == 443)) | (
        (keys["flags"] == 0) & (keys["dport"] == 443))
    ours = NatTable(table.family, keys[to_443], table.values[to_443])
    lines = sorted(re.sub(r"Created=[01]sec ago", "Created=Nsec ago", line)
                   for line in iter_nat_list(ours))
    nat_port = int(ours.keys["dport"][ours.keys["flags"] == 1][0])
    pod_port = int(ours.keys["sport"][ours.keys["flags"] == 0][0])
    assert lines == sorted([
        f"TCP IN {SERVER}:443 -> {t.egress4[0]}:{nat_port} XLATE_DST "
        f"{t.pods4[0]}:{pod_port} Created=Nsec ago NeedsCT=1\n",
        f"TCP OUT {t.pods4[0]}:{pod_port} -> {SERVER}:443 XLATE_SRC "
        f"{t.egress4[0]}:{nat_port} Created=Nsec ago NeedsCT=1\n",
    ])


def prog_id(pin: Path) -> int:
    shown = subprocess.run(["bpftool", "-j", "prog", "show", "pinned", str(pin)],
                           capture_output=True, text=True, check=True)
    return int(json.loads(shown.stdout)["id"])


def test_policy_changes_apply_without_reloading_the_program(lab: Lab, bpf) -> None:  # noqa: F811
    t = lab.topology
    dp = bpf(NodePortRange())
    before = prog_id(dp.pin_dir / "progs" / "egw_egress")
    assert lab.load(f"{SERVER}:80", 2).seen_as == {t.egress4[0]: 2}
    dp.apply(lab_rules(t, [t.egress4[1]]))
    assert lab.load(f"{SERVER}:80", 2).seen_as == {t.egress4[1]: 2}
    # An excluded destination passes unchanged (the server sees the pod itself).
    dp.apply(lab_rules(t, [t.egress4[1]], excluded=["198.51.100.11/32"]))
    assert lab.load("198.51.100.11:80", 1).seen_as == {t.pods4[0]: 1}
    assert lab.load(f"{SERVER}:80", 1).seen_as == {t.egress4[1]: 1}
    # No gateway: dropped, counted under Cilium's reason 194.
    dp.apply(lab_rules(t, [t.egress4[0]], no_gateway=True))
    assert lab.load(f"{SERVER}:80", 2, timeout=1).succeeded == 0
    assert dp.drop_counts()["No egress gateway found"] >= 2
    assert prog_id(dp.pin_dir / "progs" / "egw_egress") == before


def test_icmp_echo_and_udp_of_both_families_are_masqueraded(lab: Lab, bpf) -> None:  # noqa: F811
    t = lab.topology
    dp = bpf(NodePortRange())
    assert lab.load(SERVER, 3, proto="icmp").succeeded == 3
    assert lab.load("2001:db8:100::10", 3, proto="icmp").succeeded == 3
    assert lab.load("[2001:db8:100::10]:53", 2, proto="udp").seen_as == {t.egress6[0]: 2}
    assert lab.load(f"{SERVER}:53", 2, proto="udp").seen_as == {t.egress4[0]: 2}
    counts = {(e.family, e.proto.label, e.egress_ip.compressed, e.remote_addr): n
              for e, n in dp.endpoint_counts().items()}
    assert counts == {
        (Family.IPV4, "ICMP", t.egress4[0], SERVER): 3,
        (Family.IPV6, "ICMPv6", t.egress6[0], "[2001:db8:100::10]"): 3,
        (Family.IPV6, "UDP", t.egress6[0], "[2001:db8:100::10]:53"): 2,
        (Family.IPV4, "UDP", t.egress4[0], f"{SERVER}:53"): 2,
    }


def test_nat_fill_up_signals_match_the_tries_histogram(lab: Lab, bpf) -> None:  # noqa: F811
    dp = bpf(PORTS_64, cilium_version="1.16")
    lab.load(f"{SERVER}:443", 70, parallel=1, timeout=1)
    signals = dp.handle_signals()
    hist = dp.retries_histogram(Family.IPV4)
    # nat.h signals when a search used more than SNAT_SIGNAL_THRES (64) tries.
    assert signals == sum(n for tries, n in hist.items() if tries > 64)
    assert signals >= 7
    assert dp.signals_handled == signals and dp.gc_runs == 1


def test_gc_applies_ciliums_ct_lifetimes(lab: Lab, bpf) -> None:  # noqa: F811
    dp = bpf(NodePortRange())
    assert lab.load(f"{SERVER}:80", 3).succeeded == 3  # closed: FIN both ways
    assert lab.load(f"{SERVER}:53", 2, proto="udp").succeeded == 2
    client = Client(lab, 8080)
    try:
        assert all(client.ask("open 2"))  # established, held open
        now = int(time.clock_gettime(time.CLOCK_MONOTONIC))

        def remaining() -> dict[str, int]:
            counts = {e.remote_addr: n for e, n in dp.endpoint_counts().items()}
            return dict(sorted(counts.items()))

        assert remaining() == {f"{SERVER}:80": 3, f"{SERVER}:53": 2, f"{SERVER}:8080": 2}
        # Cilium's lifetimes: both directions closing 10 s, non-TCP 60 s, TCP 8000 s.
        assert dp.collect_garbage(now=now + 5) == 0
        assert dp.collect_garbage(now=now + 12) == 6
        assert remaining() == {f"{SERVER}:53": 2, f"{SERVER}:8080": 2}
        assert dp.collect_garbage(now=now + 62) == 4
        assert dp.collect_garbage(now=now + 7990) == 0
        assert dp.collect_garbage(now=now + 8002) == 4
        assert remaining() == {}
    finally:
        client.close()


def test_lab_cli_applies_and_counts_with_the_bpf_datapath(lab: Lab) -> None:  # noqa: F811
    t = lab.topology
    name = t.name
    try:
        applied = egressgw("lab", "apply", "--name", name, "--datapath", "bpf",
                           "--node-port-range", str(PORTS_64), "--cilium-version", "1.16")
        assert f"in {t.gateway_ns}" in applied.stdout
        assert lab.load(f"{SERVER}:443", 65, parallel=1, timeout=2).succeeded == 63
        stats = egressgw("lab", "nat-stats", "--name", name, "--datapath", "bpf",
                         "--node-port-range", str(PORTS_64)).stdout
        assert stats.splitlines()[1].split() == ["ipv4", "TCP", t.egress4[0],
                                                 f"{SERVER}:443", "63"]
        assert "saturation ipv4: 100.00% (63/63)" in stats
        refused = re.search(r"No mapping for NAT masquerade (\d+)", stats)
        assert refused is not None and int(refused[1]) >= 2  # retransmitted SYNs add more
    finally:
        BpfDatapath(BpfSettings(netns=t.gateway_ns)).cleanup()


def test_distributed_lru_gives_the_nat_maps_one_lru_per_cpu(lab: Lab, bpf) -> None:  # noqa: F811
    """Cilium 1.18's --bpf-distributed-lru creates the NAT maps with BPF_F_NO_COMMON_LRU."""
    with pytest.raises(ConfigError, match="--bpf-distributed-lru"):
        BpfSettings(distributed_lru=True)  # a 1.18 flag
    dp = bpf(NodePortRange(), distributed_lru=True, cilium_version="1.18")
    assert dp.maps["snat_v4"].info.map_flags == 2
    assert dp.maps["snat_v6"].info.map_flags == 2
    assert lab.load(f"{SERVER}:80", 3).seen_as == {lab.topology.egress4[0]: 3}
    # A restart with the other setting refuses to reuse (or silently change) the maps.
    other = BpfDatapath(BpfSettings(NodePortRange(), cilium_version="1.18",
                                    netns=lab.topology.gateway_ns))
    with pytest.raises(DatapathError, match="--bpf-distributed-lru"):
        other.apply(lab_rules(lab.topology, [lab.topology.egress4[0]]))
