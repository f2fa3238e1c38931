"""``egressgw agent --datapath bpf`` inside the lab's gateway namespace, for real.

nat-stats and /metrics come from the pinned NAT map; a restarted agent keeps the map,
the program and the connections; ``--cleanup`` removes program, maps and pins. With
--node-port-range 30000,65471 Cilium v1.16's clamp reaches 63 ports (65472..65534; see
test_bpf_datapath.py), so 63 connections saturate the tuple: 63/63 = 100%.
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from agent_support import AgentProcess, get_json, poll_until, sample_value, scrape
from bpf_support import Client, server_out_rsts
from egressgw.datapath.bpf.pins import BPFFS_DIR, ensure_bpffs
from egressgw.lab import Lab
from netns import lab, run_in  # noqa: F401  (module fixture)
from test_agent_kernel import (
    NODE_PORTS,
    SERVER4,
    echoes,
    in_gateway,
    lab_files,
    open_held_connection,
)

pytestmark = pytest.mark.kernel


@pytest.fixture
def bpffs() -> None:
    if shutil.which("clang") is None or shutil.which("bpftool") is None:
        pytest.skip("the BPF datapath needs clang and bpftool (scripts/test.sh installs them)")
    ensure_bpffs()  # in the host's mount namespace, before `ip netns exec`


def start_agent(lab: Lab, policies: Path, inventory: Path, *extra: str,  # noqa: F811
                node_ports: str = NODE_PORTS) -> AgentProcess:
    agent = AgentProcess(
        ["--datapath", "bpf", "--policies", str(policies), "--inventory", str(inventory),
         "--node", lab.topology.gateway_node, "--node-port-range", node_ports, *extra,
         "--nat-map-stats-interval", "1s", "--poll-interval", "0.2s",
         "--listen", "127.0.0.1:0"],
        argv_prefix=["ip", "netns", "exec", lab.topology.gateway_ns],
    )
    agent.wait_for_log("applied ")
    return agent


def cleanup(lab: Lab) -> None:  # noqa: F811
    done = run_in(lab.topology.gateway_ns, [AgentProcess.executable(), "agent", "--datapath",
                                            "bpf", "--cleanup"], check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.usefixtures("bpffs")
def test_bpf_agent_counts_from_the_map_survives_a_restart_and_cleans_up(
        lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    t = lab.topology
    egress = t.egress4[0]
    policies, inventory = lab_files(tmp_path, lab, egress_ip=egress)
    pin_dir = BPFFS_DIR / t.gateway_ns
    agent = start_agent(lab, policies, inventory)
    sock = None
    try:
        assert (pin_dir / "snat_v4").exists()
        sock, seen_as = open_held_connection(lab, 8080)
        assert seen_as == egress
        with lab.start_load(f"{SERVER4}:443", 63, parallel=1, timeout=2) as held:
            assert held.result.succeeded == 63
            assert lab.load(f"{SERVER4}:443", 3, parallel=1, timeout=1).succeeded == 0

            def top_count() -> dict[str, object] | None:
                doc = in_gateway(lab, lambda: get_json(agent.url + "/v1/statedb/nat-stats"))
                rows = [r for r in doc["rows"] if r["remoteAddr"] == f"{SERVER4}:443"]
                return rows[0] if rows and rows[0]["count"] == 63 else None

            row = poll_until(top_count, what="nat-stats to show 63 connections")
            assert row["egressIP"] == egress and row["proto"] == "TCP"

            def refusals_seen() -> dict[str, list[tuple[dict[str, str], float]]] | None:
                samples = in_gateway(lab, lambda: scrape(agent.url))
                failed = sample_value(samples, "egressgw_nat_allocation_failures_total",
                                      reason="No mapping for NAT masquerade")
                return samples if failed is not None and failed >= 3 else None

            samples = poll_until(refusals_seen, what="reason 167 in /metrics")
            assert sample_value(samples, "egressgw_nat_endpoint_max_connection",
                                family="ipv4") == 1.0

            # A restart: the next agent finds the pins and the attached program.
            agent.signal(signal.SIGTERM)
            assert agent.wait() == 0
            agent = start_agent(lab, policies, inventory)
            assert echoes(sock)
            poll_until(top_count, what="nat-stats after the restart")
        agent.signal(signal.SIGTERM)
        assert agent.wait() == 0
    finally:
        if sock is not None:
            sock.close()
        agent.kill()
        cleanup(lab)
    assert not pin_dir.exists()
    assert run_in(t.gateway_ns, ["tc", "filter", "show", "dev", "ext0", "egress"]).stdout == ""
    # Without the program the gateway only routes again: the server sees the pod.
    assert lab.load(f"{SERVER4}:80", 1).seen_as == {t.pods4[0]: 1}


@pytest.mark.usefixtures("bpffs")
def test_bpf_agent_counts_connections_broken_by_eviction(lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    """A 512-entry NAT map (256 connections): opening 512 evicts the oldest entries (churn
    of twice the map, so that the kernel's approximate LRU surely takes them); the old
    connections' next packets get new source ports, the server resets those unknown
    tuples, and the agent's /metrics counts each re-mapped connection."""
    policies, inventory = lab_files(tmp_path, lab, egress_ip=lab.topology.egress4[0])
    # NAT ports above Linux's ephemeral range: a re-mapping never keeps the old port.
    agent = start_agent(lab, policies, inventory, "--bpf-nat-global-max", "512",
                        node_ports="30000,60999")
    client = Client(lab, 8080)
    try:
        assert all(client.ask("open 32"))
        assert all(client.ask("open 480"))
        before = server_out_rsts(lab)
        outcome = client.ask("poke 32")
        resets = outcome.count("reset")
        assert resets >= 1, outcome
        assert server_out_rsts(lab) - before >= resets

        def remaps_seen() -> float | None:
            samples = in_gateway(lab, lambda: scrape(agent.url))
            n = sample_value(samples, "egressgw_nat_allocation_failures_total",
                             reason="NAT entry evicted, connection re-mapped")
            return n if n is not None and n >= resets else None

        poll_until(remaps_seen, what="re-mapped connections in /metrics")
        agent.signal(signal.SIGTERM)
        assert agent.wait() == 0
    finally:
        client.close()
        agent.kill()
        cleanup(lab)
