"""The agent over the model datapath: connections driven through the applied rules run
the port space dry, and /metrics shows it; and ``egressgw agent --datapath model`` as a
real process: signals, reloads, a malformed edit, a clean exit."""

from __future__ import annotations

import ipaddress
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_support import (
    GATEWAY,
    AgentProcess,
    Clock,
    break_policy,
    copy_examples,
    get,
    get_json,
    poll_until,
    sample_value,
    scrape,
    settled,
)
from egressgw.agent import Agent, AgentConfig, AgentHTTPServer, ListenAddress
from egressgw.agent.modeldp import ModelAgentDatapath, Verdict
from egressgw.config import NodePortRange
from egressgw.datapath.model import ConnectResult
from egressgw.net import Endpoint, FiveTuple, Proto

# 64 NAT ports (65472..65535); Cilium's clamp reaches 63 of them.
PORTS = NodePortRange(30000, 65471)
CLIENT = "192.0.2.10"  # client-1 (shop): masqueraded behind 203.0.113.10
TOOLBOX = "192.0.2.30"  # ops: its policy's nodeSelector matches no node

NO_GATEWAY_POLICY = """\
apiVersion: cilium.io/v2
kind: CiliumEgressGatewayPolicy
metadata:
  name: ops-nowhere
spec:
  selectors:
    - namespaceSelector:
        matchLabels:
          team: ops
  destinationCIDRs: [198.51.100.0/24]
  egressGateway:
    nodeSelector:
      matchLabels:
        egress-gateway: "no-such-node"
"""


def tcp(src: str, sport: int, dst: str, dport: int) -> FiveTuple:
    return FiveTuple(Proto.TCP, Endpoint(ipaddress.ip_address(src), sport),
                     Endpoint(ipaddress.ip_address(dst), dport))


@pytest.fixture
def model_agent(tmp_path: Path) -> Iterator[tuple[Agent, ModelAgentDatapath, Clock, str]]:
    policies, inventory = copy_examples(tmp_path)
    (policies / "ops-nowhere.yaml").write_text(NO_GATEWAY_POLICY)
    datapath = ModelAgentDatapath.for_node_ports(PORTS, seed=7)
    clock = Clock()
    config = AgentConfig(policies, inventory, GATEWAY, datapath="model", node_port_range=PORTS,
                         stats_interval=1.0)
    agent = Agent(config, datapath, clock=clock, wall=clock)
    server = AgentHTTPServer(ListenAddress("127.0.0.1", 0), agent.api)
    server.start()
    try:
        agent.start()
        yield agent, datapath, clock, server.address.url()
    finally:
        server.stop()
        agent.close()


def test_rules_route_connections_like_the_gateway(
    model_agent: tuple[Agent, ModelAgentDatapath, Clock, str]
) -> None:
    _, datapath, _, _ = model_agent
    masqueraded = datapath.connect(tcp(CLIENT, 40000, "198.51.100.5", 443))
    assert isinstance(masqueraded, ConnectResult) and masqueraded.ok
    assert masqueraded.port is not None and 65472 <= masqueraded.port <= 65535
    # 198.51.100.200/32 is excluded by the shop's policy; 203.0.113.0/24 has no policy.
    assert datapath.connect(tcp(CLIENT, 40001, "198.51.100.200", 443)) is Verdict.PASSED
    assert datapath.connect(tcp(CLIENT, 40002, "203.0.113.99", 443)) is Verdict.PASSED
    assert datapath.connect(tcp(TOOLBOX, 40000, "198.51.100.5", 443)) is Verdict.NO_GATEWAY


def test_running_out_of_ports_shows_in_metrics_and_nat_stats(
    model_agent: tuple[Agent, ModelAgentDatapath, Clock, str]
) -> None:
    agent, datapath, clock, url = model_agent
    results = [datapath.connect(tcp(CLIENT, 20000 + i, "198.51.100.5", 443)) for i in range(80)]
    datapath.connect(tcp(TOOLBOX, 40000, "198.51.100.5", 443))
    established = [r for r in results if isinstance(r, ConnectResult) and r.ok]
    dropped = [r for r in results if isinstance(r, ConnectResult) and not r.ok]
    assert len(established) + len(dropped) == 80
    assert len(established) == 63  # every port the clamp reaches
    clock.now += 1
    agent.tick()
    settled(agent, 2)

    doc = get_json(url + "/v1/statedb/nat-stats")
    assert [(r["egressIP"], r["remoteAddr"], r["count"], r["rank"]) for r in doc["rows"]] == [
        ("203.0.113.10", "198.51.100.5:443", 63, 1)]
    assert doc["divisor"] == 63
    samples = scrape(url)
    assert sample_value(samples, "egressgw_nat_endpoint_max_connection", family="ipv4") == 1.0
    assert sample_value(samples, "egressgw_nat_endpoint_max_connection", family="ipv6") is None
    failures = sample_value(samples, "egressgw_nat_allocation_failures_total",
                            reason="No mapping for NAT masquerade")
    assert failures == len(dropped) == 17
    assert sample_value(samples, "egressgw_drop_count_total",
                        reason="No egress gateway found", direction="EGRESS") == 1
    assert sample_value(samples, "egressgw_nat_entries", family="ipv4") == 63
    assert sample_value(samples, "egressgw_agent_info", datapath="model") == 1


# -- the real process ----------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return copy_examples(tmp_path)


def test_agent_process_reloads_rejects_and_exits_cleanly(files: tuple[Path, Path]) -> None:
    policies, inventory = files
    agent = AgentProcess([
        "--policies", str(policies), "--inventory", str(inventory), "--node", GATEWAY,
        "--datapath", "model", "--listen", "127.0.0.1:0", "--nat-map-stats-interval", "1s",
        "--poll-interval", "0.1s",
    ])
    try:
        applied = agent.wait_for_log("applied ")
        # Timestamped lines on stderr: "2026-11-26 11:20:03,123 INFO egressgw.agent...".
        assert applied[:4].isdigit() and applied[4] == "-" and " INFO " in applied
        assert get(agent.url + "/healthz")[0] == 200

        mark = len(agent.lines)
        agent.signal(signal.SIGHUP)
        agent.wait_for_log("reload requested", after=mark)
        agent.wait_for_log("applied ", after=mark)

        mark = len(agent.lines)
        break_policy(policies)
        error = agent.wait_for_log("reconcile rejected", after=mark)
        assert "shop-clients.yaml" in error and "198.51.100.0/33" in error
        errors = poll_until(lambda: sample_value(scrape(agent.url),
                                                 "egressgw_reconcile_errors_total") or None,
                            what="the reconcile error metric")
        assert errors == 1
        assert get(agent.url + "/healthz")[0] == 200  # the previous rules still run

        agent.signal(signal.SIGTERM)
        assert agent.wait() == 0
        assert "the egress rules stay in force" in agent.log()
    finally:
        agent.kill()


def test_agent_needs_its_files_unless_cleaning_up() -> None:
    agent_args = ["--datapath", "model", "--listen", "127.0.0.1:0"]
    exe = str(Path(sys.executable).parent / "egressgw")
    missing = subprocess.run([exe, "agent", *agent_args], capture_output=True, text=True,
                             timeout=30, check=False)
    assert missing.returncode == 2
    assert "missing --policies, --inventory, --node" in missing.stderr
    cleanup = subprocess.run([exe, "agent", "--cleanup", "--datapath", "model"],
                             capture_output=True, text=True, timeout=30, check=False)
    assert cleanup.returncode == 0, cleanup.stderr
    bad_listen = subprocess.run([exe, "agent", "--policies", "p", "--inventory", "i",
                                 "--node", "n", "--datapath", "model", "--listen", "nowhere"],
                                capture_output=True, text=True, timeout=30, check=False)
    assert bad_listen.returncode == 2
    assert bad_listen.stderr.strip() == (
        "egressgw: error: --listen: 'nowhere': expected IP:PORT such as "
        "127.0.0.1:9967 or [::1]:9967")
