"""The netfilter model (a Linux gateway's nf_nat and conntrack) on its own.

Expected values are the kernel's constants and measured behaviour (docs/simulation.md,
tests/test_netfilter_model_kernel.py): a search tries min(range, 128) ports, then
rounds of 64, 32, 16 and 8 (248 in all); ports of TIME_WAIT/CLOSE TCP entries are taken
over, never those of live ones; lifetimes TIME_WAIT 120 s, CLOSE 10 s, UDP 30 s, TCP
established 432000 s; nothing is evicted when the table is full.
"""

from __future__ import annotations

import json
import random

import pytest

from cli_support import run_cli
from egressgw.config import NodePortRange
from egressgw.datapath.model import DropReason, EndKind, ModelConfig, ModelDatapath
from egressgw.net import Endpoint, FiveTuple, Proto, parse_ip

EGRESS = parse_ip("203.0.113.10")
SERVER = Endpoint(parse_ip("198.51.100.10"), 443)
PORTS_64 = NodePortRange(30000, 65471)  # NAT ports 65472..65535
PORTS_1024 = NodePortRange(30000, 64511)  # NAT ports 64512..65535


def model(ports: NodePortRange = PORTS_64, seed: int = 0, **config: object) -> ModelDatapath:
    return ModelDatapath(ModelConfig(node_port_range=ports, datapath_model="netfilter",
                                     **config), random.Random(seed))  # type: ignore[arg-type]


def flow(i: int, proto: Proto = Proto.TCP, pod: str = "192.0.2.10") -> FiveTuple:
    return FiveTuple(proto, Endpoint(parse_ip(pod), 40000 + i), SERVER)


def held(dp: ModelDatapath) -> int:
    return sum(dp.endpoint_counts().values())


def test_64_ports_give_64_connections_and_a_failed_search_tries_each_once() -> None:
    dp = model()
    results = [dp.connect(flow(i), EGRESS) for i in range(70)]
    ports = [r.port for r in results if r.ok]
    assert sorted(ports) == list(range(65472, 65536))
    failed = [r for r in results if not r.ok]
    assert len(failed) == 6
    assert {r.drop for r in failed} == {DropReason.NF_INSERT_FAILED}
    assert {r.tries for r in failed} == {64}
    assert dp.counters.drops == {int(DropReason.NF_INSERT_FAILED): 6}


def test_a_failed_search_of_a_wide_range_tries_248_ports() -> None:
    dp = model(PORTS_1024)
    for i in range(4000):
        if not dp.connect(flow(i), EGRESS).ok:
            break
    tries = dp.counters.tries
    assert len(tries) - 1 == 128 + 64 + 32 + 16 + 8
    assert tries[-1] >= 1 and held(dp) <= 1024


def test_a_source_port_inside_the_range_is_kept_when_free() -> None:
    dp = model()
    inside = FiveTuple(Proto.TCP, Endpoint(parse_ip("192.0.2.10"), 65500), SERVER)
    assert dp.connect(inside, EGRESS).port == 65500
    assert dp.connect(inside, EGRESS).port == 65500  # the same flow: its entry
    other_pod = FiveTuple(Proto.TCP, Endpoint(parse_ip("192.0.2.11"), 65500), SERVER)
    result = dp.connect(other_pod, EGRESS)
    assert result.ok and result.port != 65500


@pytest.mark.parametrize("end", [EndKind.FIN, EndKind.RST])
def test_closed_tcp_ports_are_taken_over_live_ones_never(end: EndKind) -> None:
    dp = model(seed=3)
    for i in range(64):
        assert dp.connect(flow(i), EGRESS).ok
        dp.close(flow(i), end)
    dp.advance(1.0)
    got = sum(dp.connect(flow(100 + i), EGRESS).ok for i in range(70))
    # About half of the candidate ports pass the sequence check: most get through,
    # never more than the range holds.
    assert 40 <= got <= 64
    assert dp.counters.takeovers == got


def test_udp_ports_are_never_taken_over() -> None:
    dp = model(seed=1)
    for i in range(64):
        assert dp.connect(flow(i, Proto.UDP), EGRESS).ok
    assert not any(dp.connect(flow(100 + i, Proto.UDP), EGRESS).ok for i in range(20))
    assert dp.counters.takeovers == 0


def test_lifetimes_are_linux_defaults() -> None:
    dp = model()
    dp.connect(flow(0), EGRESS)
    dp.reply(flow(0), EGRESS)
    dp.close(flow(0), EndKind.FIN)  # TIME_WAIT, 120 s
    dp.connect(flow(1), EGRESS)
    dp.reply(flow(1), EGRESS)
    dp.close(flow(1), EndKind.RST)  # CLOSE, 10 s
    dp.connect(flow(2, Proto.UDP), EGRESS)
    dp.reply(flow(2, Proto.UDP), EGRESS)  # UDP, 30 s
    dp.connect(flow(3), EGRESS)
    dp.reply(flow(3), EGRESS)  # established, 432000 s
    for when, expected in ((9.0, 4), (11.0, 3), (29.0, 3), (31.0, 2), (119.0, 2),
                           (121.0, 1), (431999.0, 1), (432001.0, 0)):
        dp.advance(when)
        assert held(dp) == expected, when


def test_a_full_table_drops_new_connections_and_evicts_nothing() -> None:
    dp = model(nf_conntrack_max=10)
    assert all(dp.connect(flow(i), EGRESS).ok for i in range(10))
    result = dp.connect(flow(10), EGRESS)
    assert result.drop is DropReason.NF_TABLE_FULL
    assert held(dp) == 10 and dp.counters.evictions_out == dp.counters.evictions_in == 0


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code, out, _err = run_cli(capsys, *args)
    return code, out


def test_simulate_plan_and_forecast_accept_the_netfilter_model(
    capsys: pytest.CaptureFixture[str],
) -> None:
    workload = "src/egressgw/examples/workloads/web-and-dns.yaml"
    code, out = run(capsys, "simulate", workload, "--datapath-model", "netfilter",
                    "--duration", "2m", "-o", "json", "--no-progress")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["settings"]["datapathModel"] == "netfilter"
    assert doc["settings"]["limit"]["ports"] == 65535 - 32767
    code, out = run(capsys, "plan", workload, "--datapath-model", "netfilter",
                    "--nat-port-range", "1024-65535", "--estimate-only")
    assert code == 0 and out.startswith("Limit: 64512 ports (netfilter: --nat-port-range")
    code, out = run(capsys, "simulate", workload, "--nat-port-range", "1024-65535")
    assert code == 2
    table = "tests/golden/conntrack-L.txt"
    code, out = run(capsys, "forecast", f"{table}@0", f"{table}@60", "--datapath-model",
                    "cilium", "-o", "json")
    assert code == 0 and json.loads(out)["limit"] == 32767


def test_only_the_last_32_attempts_take_a_port_over() -> None:
    """63 live connections and one TIME_WAIT entry on 64 ports: one round of 64 attempts
    from a random offset, and only its last 32 may take over, when the new SYN's sequence
    number is past the old one's: a new connection gets through 1/2 x 1/2 = 1/4 of the
    time (1/2 if every attempt could take over, 0 if none could)."""
    trials = 400
    through = 0
    for seed in range(trials):
        dp = model(seed=seed)
        for i in range(64):
            dp.connect(flow(i), EGRESS)
            dp.reply(flow(i), EGRESS)
        dp.close(flow(0), EndKind.FIN)
        dp.advance(1.0)
        through += dp.connect(flow(1000), EGRESS).ok
    assert 0.17 < through / trials < 0.33


# find_appropriate_src (nf_nat_core.c): a pod's later connections from the same source
# address, port and protocol take the SNAT port of its newest entry behind the same egress
# IP, when that port is free towards the new remote (the kernel's behaviour measured in
# tests/test_netfilter_source_kernel.py). Remotes here are other servers and ports.

def to(server: str, port: int, sport: int, proto: Proto = Proto.TCP) -> FiveTuple:
    return FiveTuple(proto, Endpoint(parse_ip("192.0.2.10"), sport),
                     Endpoint(parse_ip(server), port))


REMOTES = [("198.51.100.10", 80), ("198.51.100.10", 8080), ("198.51.100.11", 443),
           ("198.51.100.12", 80)]


def test_one_pod_port_keeps_one_snat_port_towards_many_remotes() -> None:
    dp = model(PORTS_1024, seed=5)
    ports = {dp.open(to(ip, port, 40000), EGRESS).port for ip, port in REMOTES}
    assert len(ports) == 1
    assert dp.engine.source_mappings == len(REMOTES) - 1
    # Another pod with the same port, another protocol: their own searches.
    other = FiveTuple(Proto.TCP, Endpoint(parse_ip("192.0.2.11"), 40000), SERVER)
    udp = to("198.51.100.10", 53, 40000, Proto.UDP)
    assert {dp.open(other, EGRESS).port, dp.open(udp, EGRESS).port}.isdisjoint(ports)


def test_the_sources_mapping_comes_before_keeping_the_port() -> None:
    dp = model(PORTS_1024, seed=6)
    holder = FiveTuple(Proto.TCP, Endpoint(parse_ip("192.0.2.200"), 65300),
                       Endpoint(parse_ip("198.51.100.10"), 80))
    assert dp.open(holder, EGRESS).port == 65300
    first = dp.open(to("198.51.100.10", 80, 65300), EGRESS).port
    assert first != 65300
    # Free towards the next remote, but the source already has a mapping: that one.
    assert dp.open(to("198.51.100.11", 80, 65300), EGRESS).port == first


def test_newest_mapping_only_then_keep_or_search() -> None:
    dp = model(PORTS_1024, seed=7)
    a1 = dp.open(to("198.51.100.10", 80, 40001), EGRESS).port
    assert a1 is not None
    hold = FiveTuple(Proto.TCP, Endpoint(parse_ip("192.0.2.200"), a1),
                     Endpoint(parse_ip("198.51.100.12"), 80))
    assert dp.open(hold, EGRESS).port == a1
    a2 = dp.open(to("198.51.100.12", 80, 40001), EGRESS).port
    assert a2 not in (a1, None)
    # The newest entry (a2) is the mapping now.
    assert dp.open(to("198.51.100.11", 443, 40001), EGRESS).port == a2
    hold2 = FiveTuple(Proto.TCP, Endpoint(parse_ip("192.0.2.200"), a2),
                      Endpoint(parse_ip("198.51.100.10"), 443))
    assert dp.open(hold2, EGRESS).port == a2
    # Newest taken towards this remote: the search, not the older a1 (free here).
    a3 = dp.open(to("198.51.100.10", 443, 40001), EGRESS).port
    assert a3 not in (a1, a2, None)


def test_mappings_of_another_egress_ip_are_skipped_and_time_wait_ones_used() -> None:
    dp = model(PORTS_1024, seed=8)
    other_egress = parse_ip("203.0.113.11")
    j1 = dp.open(to("198.51.100.10", 80, 40002), EGRESS).port
    j2 = dp.open(to("198.51.100.11", 80, 40002), other_egress).port
    assert j2 != j1
    dp.close(to("198.51.100.10", 80, 40002), EndKind.FIN)  # TIME_WAIT, still in the chain
    assert dp.open(to("198.51.100.12", 80, 40002), EGRESS).port == j1
    dp.close(to("198.51.100.12", 80, 40002), EndKind.RST)  # CLOSE, 10 s
    dp.advance(200.0)  # both entries gone: no mapping left for EGRESS (j2 is EGRESS2's)
    j4 = dp.open(to("198.51.100.10", 8080, 40002), EGRESS).port
    assert j4 not in (j1, j2, None)
    assert dp.engine.source_mappings == 1
