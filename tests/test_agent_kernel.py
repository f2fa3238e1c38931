"""The agent for real: ``egressgw agent`` inside the lab's gateway namespace, applying
policy files with the kernel datapath (nftables + conntrack), with real connections.

With --node-port-range 30000,65471 a tuple has 64 NAT ports (65472..65535), so
exhaustion takes 64 connections (opened one at a time; see test_kernel_datapath.py for
why that guarantees all 64 ports).
"""

from __future__ import annotations

import re
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from agent_support import AgentProcess, get_json, poll_until, sample_value, scrape
from egressgw.datapath.kernel.netns import call_in
from egressgw.datapath.kernel.ruleset import without_tracking_state
from egressgw.lab import Lab
from gateway_files import POLICY_FILE, gateway_files
from netns import lab, run_in  # noqa: F401  (module fixture)

pytestmark = pytest.mark.kernel

T = TypeVar("T")
SERVER4 = "198.51.100.10"
NODE_PORTS = "30000,65471"


def lab_files(directory: Path, lab: Lab, *, egress_ip: str) -> tuple[Path, Path]:  # noqa: F811
    """A policy sending the lab's first pod to the servers through ``egress_ip``, and an
    inventory describing the lab (the gateway node is named after its namespace)."""
    t = lab.topology
    return gateway_files(directory, node=t.gateway_node, egress_ip=egress_ip,
                         egress_addresses=t.egress4, pod_ip=t.pods4[0])


def start_agent(lab: Lab, policies: Path, inventory: Path) -> AgentProcess:  # noqa: F811
    agent = AgentProcess(
        ["--policies", str(policies), "--inventory", str(inventory),
         "--node", lab.topology.gateway_node, "--node-port-range", NODE_PORTS,
         "--nat-map-stats-interval", "1s", "--poll-interval", "0.2s",
         "--listen", "127.0.0.1:0"],
        argv_prefix=["ip", "netns", "exec", lab.topology.gateway_ns],
    )
    agent.wait_for_log("applied ")
    return agent


def in_gateway(lab: Lab, fn: Callable[[], T]) -> T:  # noqa: F811
    """Call ``fn`` with this thread in the gateway namespace, where the agent listens."""
    return call_in(lab.topology.gateway_ns, fn)


def ruleset(lab: Lab) -> str:  # noqa: F811
    """The agent's nft table, without the packet counters (they move with traffic)."""
    text = run_in(lab.topology.gateway_ns, ["nft", "list", "table", "inet", "egressgw"]).stdout
    return re.sub(r"counter packets \d+ bytes \d+", "counter", without_tracking_state(text))


@pytest.fixture
def clean(lab: Lab) -> Iterator[None]:  # noqa: F811
    """No conntrack state before; the agent's rules removed (with --cleanup) after."""
    lab.flush_conntrack()
    try:
        yield
    finally:
        AgentProcess.run_cleanup(["ip", "netns", "exec", lab.topology.gateway_ns])
        lab.flush_conntrack()


def open_held_connection(lab: Lab, port: int) -> tuple[socket.socket, str]:  # noqa: F811
    """A TCP connection from the first pod to the server, and who the server saw."""
    t = lab.topology
    sock = call_in(t.client_ns, lambda: socket.create_connection(
        (SERVER4, port), timeout=5, source_address=(t.pods4[0], 0)))
    greeting = sock.makefile("rb").readline().decode()
    return sock, greeting.split()[0]


def echoes(sock: socket.socket) -> bool:
    sock.sendall(b"still there?\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(64)
        if not chunk:
            return False
        data += chunk
    return data == b"still there?\n"


@pytest.mark.usefixtures("clean")
def test_exhaustion_shows_in_nat_stats_and_metrics(lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    egress = lab.topology.egress4[0]
    policies, inventory = lab_files(tmp_path, lab, egress_ip=egress)
    agent = start_agent(lab, policies, inventory)
    try:
        with lab.start_load(f"{SERVER4}:443", 64, parallel=1, timeout=2) as held:
            assert held.result.succeeded == 64
            assert held.result.seen_as == {egress: 64}
            # 2 s: each client retransmits its SYN once (at 1 s): 3 failed attempts.
            extra = lab.load(f"{SERVER4}:443", 3, parallel=3, timeout=2)
            assert extra.succeeded == 0

            def top_count() -> dict[str, object] | None:
                doc = in_gateway(lab, lambda: get_json(agent.url + "/v1/statedb/nat-stats"))
                rows = [r for r in doc["rows"] if r["remoteAddr"] == f"{SERVER4}:443"]
                return rows[0] if rows and rows[0]["count"] == 64 else None

            row = poll_until(top_count, what="nat-stats to show 64 connections")
            assert row["egressIP"] == egress and row["rank"] == 1 and row["proto"] == "TCP"

            def failures_seen() -> dict[str, list[tuple[dict[str, str], float]]] | None:
                samples = in_gateway(lab, lambda: scrape(agent.url))
                failed = sample_value(samples, "egressgw_nat_allocation_failures_total",
                                      reason="no free NAT port")
                return samples if failed is not None and failed >= 3 else None

            samples = poll_until(failures_seen, what="allocation failures in /metrics")
            assert sample_value(samples, "egressgw_nat_allocation_failures_total",
                                reason="no free NAT port") == 3
            assert sample_value(samples, "egressgw_drop_count_total",
                                reason="conntrack insert_failed") >= 6
            assert sample_value(samples, "egressgw_nat_endpoint_max_connection",
                                family="ipv4") == 1.0
            assert sample_value(samples, "egressgw_nat_endpoint_connections", family="ipv4",
                                egress_ip=egress, remote_addr=f"{SERVER4}:443") == 64
            assert sample_value(samples, "egressgw_nat_endpoint_port_capacity") == 64

            table = run_in(lab.topology.gateway_ns, [
                str(Path(AgentProcess.executable())), "statedb", "nat-stats",
                "--server", agent.url]).stdout
            assert [egress, f"{SERVER4}:443", "64"] == table.splitlines()[-1].split()[2:]
        agent.signal(signal.SIGTERM)
        assert agent.wait() == 0
    finally:
        agent.kill()


@pytest.mark.usefixtures("clean")
def test_bad_edits_and_crashes_leave_rules_and_connections_alone(
    lab: Lab, tmp_path: Path  # noqa: F811
) -> None:
    egress = lab.topology.egress4[0]
    policies, inventory = lab_files(tmp_path, lab, egress_ip=egress)
    agent = start_agent(lab, policies, inventory)
    sock = None
    try:
        sock, seen_as = open_held_connection(lab, 8080)
        assert seen_as == egress
        rules_before = ruleset(lab)
        assert egress in rules_before

        # A malformed edit: rejected, logged with its place, counted; nothing changes.
        policy = policies / POLICY_FILE
        good = policy.read_text()
        mark = len(agent.lines)
        policy.write_text(good.replace("198.51.100.0/24", "198.51.100.0/33"))
        error = agent.wait_for_log("reconcile rejected", after=mark)
        assert POLICY_FILE in error and "destinationCIDRs" in error

        def error_counted() -> dict[str, list[tuple[dict[str, str], float]]] | None:
            samples = in_gateway(lab, lambda: scrape(agent.url))
            errors = sample_value(samples, "egressgw_reconcile_errors_total")
            return samples if errors == 1 else None

        samples = poll_until(error_counted, what="the reconcile error metric")
        assert sample_value(samples, "egressgw_reconcile_failing") == 1
        assert ruleset(lab) == rules_before
        assert echoes(sock)

        # A crash: kill -9, nothing of the agent runs; the kernel keeps everything.
        agent.kill()
        assert ruleset(lab) == rules_before
        assert echoes(sock)

        # The next agent (with the edit fixed) converges to the same ruleset.
        policy.write_text(good)
        agent = start_agent(lab, policies, inventory)
        assert ruleset(lab) == rules_before
        assert echoes(sock)
        assert lab.load(f"{SERVER4}:8080", 2).seen_as == {egress: 2}

        # SIGTERM: a clean exit that also leaves the rules in force.
        agent.signal(signal.SIGTERM)
        assert agent.wait() == 0
        assert ruleset(lab) == rules_before
        assert echoes(sock)
    finally:
        if sock is not None:
            sock.close()
        agent.kill()


@pytest.mark.usefixtures("clean")
def test_cleanup_removes_the_rules(lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    policies, inventory = lab_files(tmp_path, lab, egress_ip=lab.topology.egress4[0])
    agent = start_agent(lab, policies, inventory)
    agent.signal(signal.SIGINT)
    assert agent.wait() == 0
    assert "egressgw" in run_in(lab.topology.gateway_ns, ["nft", "list", "tables"]).stdout
    AgentProcess.run_cleanup(["ip", "netns", "exec", lab.topology.gateway_ns])
    assert "egressgw" not in run_in(lab.topology.gateway_ns, ["nft", "list", "tables"]).stdout
